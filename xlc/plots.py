"""Figures of a run and its dataset (matplotlib, Agg; no MLflow): each function writes one PNG and returns its path.

`xlc.report` feeds them a run's MLflow history; `xlc data stats` draws the label-frequency one.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

BUCKET = re.compile(r"^recall_at_(\d+)/freq_(\d+)-(\d+|inf)$")
Series = tuple[list[int], list[float]]  # (steps, values)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
    return _save(fig, path)


def plot_curves(loss: Series, metrics: dict[str, Series], path: Path) -> Path:
    """Training loss over steps (left) and each test metric over steps (right)."""
    fig, (loss_ax, rank_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(*loss)
    loss_ax.set(xlabel="step", ylabel="training loss", title="loss")
    for name, series in metrics.items():
        rank_ax.plot(*series, marker="o", label=name)
    rank_ax.set(xlabel="step", ylabel="test metric", title="evaluation")
    rank_ax.legend()
    return _save(fig, path)


def plot_buckets(metrics: dict[str, float], path: Path) -> Path | None:
    """Bar chart of recall@k per training-frequency bucket (keys `recall_at_K/freq_LO-HI`)."""
    rows = sorted((int(m[2]), f"{m[2]}-{m[3]}", v) for k, v in metrics.items() if (m := BUCKET.match(k)))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar([name for _, name, _ in rows], [100 * v for *_, v in rows])
    k = BUCKET.match(next(k for k in metrics if BUCKET.match(k)))[1]
    ax.set(xlabel="training examples of the true label", ylabel=f"recall@{k} (%)", title="head vs tail labels")
    return _save(fig, path)


def plot_collapse(series: dict[str, Series], path: Path) -> Path | None:
    """Neural-collapse metrics over evaluation steps, log scale."""
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (steps, values) in series.items():
        ax.plot(steps, values, marker="o", label=name)
    ax.set(xlabel="step", ylabel="value", yscale="log", title="neural collapse (train features)")
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_time_to_accuracy(probes: dict[str, tuple[list[float], list[float]]], path: Path) -> Path | None:
    """Probe P@1 (%) against training seconds, one line per method: which head reaches an accuracy first."""
    if not probes:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (seconds, p1) in probes.items():
        ax.plot(seconds, [100 * v for v in p1], marker=".", label=name)
    ax.set(xlabel="training seconds", ylabel="P@1 on the probe rows (%)", title="time to accuracy")
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_series(series: dict[str, Series], path: Path, *, ylabel: str, title: str, xlabel: str = "epoch",
                log: bool = False) -> Path:
    """One line per named series (x, y) on one axis."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (x, y) in series.items():
        ax.plot(x, y, label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, yscale="log" if log else "linear")
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_grouped_bars(groups: dict[str, dict[str, float]], path: Path, *, ylabel: str, title: str) -> Path:
    """One cluster of bars per group (x axis), one bar per series name inside it (the legend)."""
    names = list(dict.fromkeys(n for bars in groups.values() for n in bars))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(7, 1.5 * len(groups)), 4))
    for i, name in enumerate(names):
        xs = [g for g, bars in enumerate(groups.values()) if name in bars]
        ax.bar([x + i * width for x in xs], [bars[name] for bars in groups.values() if name in bars], width, label=name)
    ax.set_xticks([g + width * (len(names) - 1) / 2 for g in range(len(groups))], list(groups), fontsize="small")
    ax.set(ylabel=ylabel, title=title)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_image_grid(images: np.ndarray, names: list[str], path: Path, title: str) -> Path:
    """One row of uint8 images [n, H, W, C] per class name (n = rows x columns, row-major), names on the left."""
    rows = len(names)
    cols = len(images) // rows
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8 + 1.2, rows * 0.8 + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        image = images[i]
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255)
        ax.set(xticks=[], yticks=[])
    for name, ax in zip(names, axes[:, 0]):
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
