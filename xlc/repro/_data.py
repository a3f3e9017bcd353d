"""Datasets of the repro experiments: built once into a cache by `xlc data build` (data_tools, run as a child
process so that xlc imports nothing of it) and read as dense tensors."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xlc import data as xdata
from xlc.baselines.split import read_split, truth
from xlc.baselines.tree import count_sketch
from xlc.errors import DataError


def built(cache: Path, name: str, **options) -> Path:
    """The dataset directory `xlc data build NAME --key value ...` makes, built into `cache` when missing."""
    tag = "-".join(f"{k}{'' if v is True else v}" for k, v in sorted(options.items()))
    path = cache / f"{name}-{tag}" if tag else cache / name
    if (path / "meta.json").exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    args = [a for k, v in options.items() for a in ([f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)]))]
    done = subprocess.run([sys.executable, "-m", "data_tools.cli", "build", name, str(path), "--overwrite", *args],
                          capture_output=True, text=True, env=os.environ | {"NO_COLOR": "1", "TERM": "dumb"})
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"building dataset {name} into {path} failed: {tail}")
    return path


@dataclass
class Split:
    """One split as dense tensors: x [N, dim] float32 (L2-normalised tf-idf, count-sketched to `dim`), y [N]
    (single-label) or [N, M] padded with -1."""

    x: torch.Tensor
    y: torch.Tensor


def dense_splits(directory: Path, dim: int, seed: int) -> tuple[Split, Split, int]:
    """(train, test, num_labels) of a sparse dataset directory."""
    meta = xdata.read_meta(directory)
    out = []
    for split in ("train", "test"):
        x, y = read_split(str(directory), split, "repro")
        norms = np.sqrt(np.asarray(x.multiply(x).sum(1)).ravel())
        x = count_sketch(x.multiply(1.0 / np.maximum(norms, 1e-12)[:, None]).tocsr(), dim, seed)
        dense = torch.from_numpy(np.asarray(x.todense(), dtype=np.float32))
        if dense.shape[1] < dim:
            dense = torch.nn.functional.pad(dense, (0, dim - dense.shape[1]))
        labels = truth(y)
        out.append(Split(dense, labels if meta.multi_label else labels[:, 0]))
    if not meta.multi_label and (out[0].y < 0).any():
        raise DataError(f"{directory}: a single-label training row has no label")
    return out[0], out[1], meta.num_labels


def relabel(split: Split, new_ids: torch.Tensor) -> Split:
    """The split with label l renamed new_ids[l] (padding -1 kept)."""
    y = torch.where(split.y >= 0, new_ids[split.y.clamp(min=0)], split.y)
    return Split(split.x, y)





def most_frequent(train: Split, test: Split, keep: int) -> tuple[Split, Split, int]:
    """Single-label splits restricted to the `keep` labels with the most training rows, renumbered 0..keep-1 in
    their original id order (test rows of other labels dropped)."""
    counts = torch.bincount(train.y)
    kept = torch.sort(torch.argsort(counts, descending=True, stable=True)[:keep]).values
    new_ids = torch.full((len(counts) + 1,), -1, dtype=torch.long)
    new_ids[kept] = torch.arange(len(kept))
    out = []
    for split in (train, test):
        y = new_ids[split.y.clamp(max=len(counts))]
        out.append(Split(split.x[y >= 0], y[y >= 0]))
    return out[0], out[1], len(kept)
__all__ = ["Split", "built", "dense_splits", "most_frequent", "relabel"]
