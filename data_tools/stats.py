"""`xlc data stats DIR`: the numbers of `xlc.data.stats` as text, a head/tail histogram PNG, and for an image set
a PNG grid of sample images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xlc.data import iter_batches, label_counts, label_names, read_meta
from xlc.data.schema import SAMPLES_FILE
from xlc.data.stats import dataset_stats
from xlc.plots import plot_image_grid, plot_label_frequency

GRID_CLASSES, GRID_PER_CLASS = 8, 8  # rows and columns of the sample grid
GRID_SCAN_ROWS = 8192  # train rows scanned for them: rows are stored in random order


def report(directory: str | Path, plot: Path | None = None) -> str:
    directory = Path(directory)
    s = dataset_stats(directory)
    png = plot_label_frequency(label_counts(directory), plot or directory / "label_frequency.png", directory.name)
    quantiles = ", ".join(f"q{q:g}={v}" for q, v in s.label_frequency_quantiles.items())
    lines = [
        f"samples: {s.num_train} train, {s.num_test} test",
        f"labels: {s.num_labels} ({s.labels_unseen_in_train} without a train row; "
        f"{s.test_labels_unseen_in_train} test label occurrences of those)",
        f"labels per sample: mean {s.labels_per_sample:.3f}, max {s.max_labels_per_sample}, "
        f"{s.rows_without_labels} train rows without labels",
        f"train count per label: {quantiles}",
        f"head: {s.head_labels_for_half_mass} labels carry half of the train label occurrences",
        f"histogram: {png}",
    ]
    if read_meta(directory).image is not None:
        lines.append(f"sample images: {sample_grid(directory, directory / SAMPLES_FILE)}")
    return "\n".join(lines)


def sample_grid(directory: Path, path: Path) -> Path:
    """PNG of up to GRID_PER_CLASS train images for each of the first GRID_CLASSES labels met in the first
    GRID_SCAN_ROWS train rows (one batch read: bounded memory)."""
    meta = read_meta(directory)
    batch = next(iter_batches(directory, "train", GRID_SCAN_ROWS, columns=["image"]))
    shape = (meta.image["height"], meta.image["width"], meta.image["channels"])
    targets, images = batch.targets.numpy(), batch.image.numpy().reshape(-1, *shape)
    classes = list(dict.fromkeys(targets.tolist()))[:GRID_CLASSES]
    per_class = min(GRID_PER_CLASS, min(int((targets == c).sum()) for c in classes))
    picked = np.concatenate([images[targets == c][:per_class] for c in classes])  # [classes * per_class, H, W, C]
    names = label_names(directory)
    # matplotlib's default font has no CJK glyphs: keep the ASCII part of a name (`U+4E00 一` -> `U+4E00`)
    shown = ["".join(ch for ch in names[c] if ch.isascii()).strip() or str(c) for c in classes]
    return plot_image_grid(picked, shown, path, f"{meta.name}: train samples")
