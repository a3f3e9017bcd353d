"""Plots of a run and its dataset, logged to MLflow as artifacts by the driver when a run finishes.

curves.png (loss and ranking metrics over steps), frequency_buckets.png (recall@k of test labels grouped
by their training frequency: head vs tail), collapse.png (NC metrics over evaluations, when logged),
label_frequency.png (the dataset's head/tail), and the final checkpoint under `model/`.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from xlc import data as xdata  # noqa: E402
from xlc import tracking  # noqa: E402

BUCKET = re.compile(r"^recall_at_(\d+)/freq_(\d+)-(\d+|inf)$")


def plot_label_frequency(counts: np.ndarray, path: Path, title: str) -> Path:
    """Two panels: labels sorted by train count (log-log rank plot: head left, tail right) and the histogram
    of counts over log-spaced bins."""
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



def _history(client, run_id: str, key: str) -> tuple[list[int], list[float]]:
    points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
    return [s for s, _ in points], [v for _, v in points]


def plot_curves(client, run_id: str, keys: list[str], path: Path) -> Path:
    fig, (loss_ax, rank_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(*_history(client, run_id, "loss"))
    loss_ax.set(xlabel="step", ylabel="training loss", title="loss")
    for key in keys:
        rank_ax.plot(*_history(client, run_id, key), marker="o", label=tracking.metric_name(key))
    rank_ax.set(xlabel="step", ylabel="test metric", title="evaluation")
    rank_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_buckets(metrics: dict[str, float], path: Path) -> Path | None:
    """Bar chart of recall@k per training-frequency bucket (keys `recall_at_K/freq_LO-HI`)."""
    rows = sorted((int(m[2]), f"{m[2]}-{m[3]}", v) for k, v in metrics.items() if (m := BUCKET.match(k)))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar([name for _, name, _ in rows], [100 * v for *_, v in rows])
    k = BUCKET.match(next(k for k in metrics if BUCKET.match(k)))[1]
    ax.set(xlabel="training examples of the true label", ylabel=f"recall@{k} (%)", title="head vs tail labels")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_collapse(client, run_id: str, keys: list[str], path: Path) -> Path | None:
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        ax.plot(*_history(client, run_id, key), marker="o", label=key.removeprefix("nc/"))
    ax.set(xlabel="step", ylabel="value", yscale="log", title="neural collapse (train features)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log_run_report(uri: str, run_id: str, data_dir: str, checkpoint_dir: str | None) -> None:
    """Make the plots of a finished run from its MLflow metric history and log them with the model."""
    client = tracking.client(uri)
    logger = tracking.RunLogger(uri, run_id)
    latest = client.get_run(run_id).data.metrics
    ranking = [k for k in ("p_at_1", "p_at_5", "ndcg_at_5", "psp_at_5") if k in latest]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        made = [
            plot_curves(client, run_id, ranking, out / "curves.png"),
            plot_buckets(latest, out / "frequency_buckets.png"),
            plot_collapse(client, run_id, sorted(k for k in latest if k.startswith("nc/")), out / "collapse.png"),
            plot_label_frequency(xdata.label_counts(data_dir), out / "label_frequency.png", Path(data_dir).name),
        ]
        for path in made:
            if path is not None:
                logger.artifact(path, "plots")
    if checkpoint_dir is not None:
        client.log_artifacts(run_id, checkpoint_dir, "model")
