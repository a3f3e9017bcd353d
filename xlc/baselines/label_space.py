"""The training split as fitted heads see it (`xlc.heads.TrainingSplit`): PIFA label embeddings and balanced
spherical k-means (FAISS), so that the heads themselves stay torch-only."""

from __future__ import annotations

import torch

from xlc import data as xdata
from xlc.baselines.split import read_split
from xlc.baselines.tree import cluster_unit_rows, pifa
from xlc.heads import TrainingSplit
from xlc.progress import progress


def training_split(data_dir: str, seed: int, max_dim: int = 512) -> TrainingSplit:
    """The training split of a dataset directory as fitted heads see it; rows are read on the first
    `label_embeddings()` call (PIFA needs every training row once)."""
    num_labels = xdata.read_meta(data_dir).num_labels

    def label_embeddings() -> torch.Tensor:
        x, y = read_split(data_dir, "train", "label-tree")
        return torch.from_numpy(pifa(x, y, num_labels, max_dim=max_dim, seed=seed))

    # Counts labels clustered (every tree level clusters each label once). It lives as long as this split, which
    # the trainer drops once the head is built, clearing the bar.
    bar = progress(desc="label tree: k-means", unit="label")

    def cluster(points: torch.Tensor, k: int, seed: int) -> torch.Tensor:
        ids = cluster_unit_rows(points, k, seed)
        bar.update(len(points))
        return ids

    return TrainingSplit(num_labels, seed, label_embeddings, cluster)
