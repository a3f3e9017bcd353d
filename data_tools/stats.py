"""`xlc data stats DIR`: the numbers of `xlc.data.stats` as text, and a head/tail histogram PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xlc.data import label_counts
from xlc.data.stats import dataset_stats


def plot_label_frequency(counts: np.ndarray, path: Path, title: str) -> Path:
    """Two panels: labels sorted by train count (log-log rank plot: head left, tail right) and the histogram
    of counts over log-spaced bins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rank_ax, hist_ax) = plt.subplots(1, 2, figsize=(10, 4))
    ranked = np.sort(counts)[::-1]
    seen = ranked[ranked > 0]
    rank_ax.loglog(np.arange(1, len(seen) + 1), seen)
    rank_ax.set(xlabel="label rank", ylabel="train count", title="head / tail")
    bins = np.unique(np.logspace(0, np.log10(max(seen.max(initial=1), 2)) + 0.01, 30).astype(int))
    hist_ax.hist(seen, bins=bins)
    hist_ax.set(xscale="log", yscale="log", xlabel="train count", ylabel="labels",
                title=f"{len(counts) - len(seen)} labels unseen in train")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(directory: str | Path, plot: Path | None = None) -> str:
    directory = Path(directory)
    s = dataset_stats(directory)
    png = plot_label_frequency(label_counts(directory), plot or directory / "label_frequency.png", directory.name)
    quantiles = ", ".join(f"q{q:g}={v}" for q, v in s.label_frequency_quantiles.items())
    return "\n".join([
        f"samples: {s.num_train} train, {s.num_test} test",
        f"labels: {s.num_labels} ({s.labels_unseen_in_train} without a train row; "
        f"{s.test_labels_unseen_in_train} test label occurrences of those)",
        f"labels per sample: mean {s.labels_per_sample:.3f}, max {s.max_labels_per_sample}, "
        f"{s.rows_without_labels} train rows without labels",
        f"train count per label: {quantiles}",
        f"head: {s.head_labels_for_half_mass} labels carry half of the train label occurrences",
        f"histogram: {png}",
    ])
