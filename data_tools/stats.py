"""`xlc data stats DIR`: the numbers of `xlc.data.stats` as text, and a head/tail histogram PNG."""

from __future__ import annotations

from pathlib import Path

from xlc.data import label_counts
from xlc.data.stats import dataset_stats
from xlc.plots import plot_label_frequency


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
