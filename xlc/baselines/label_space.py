"""The training split as fitted heads see it (`xlc.heads.TrainingSplit`): PIFA label embeddings and balanced
spherical k-means (FAISS), so that the heads themselves stay torch-only."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from xlc import data as xdata
from xlc.baselines.tree import cluster_unit_rows, pifa
from xlc.heads import TrainingSplit


def training_split(data_dir: str, seed: int, max_dim: int = 512) -> TrainingSplit:
    """The training split of a dataset directory as fitted heads see it; rows are read on the first
    `label_embeddings()` call (PIFA needs every training row once)."""
    meta = xdata.read_meta(data_dir)

    def label_embeddings() -> torch.Tensor:
        batch = xdata.collate(pa.concat_tables(xdata.iter_tables(data_dir, "train", 65536)), meta.multi_label)
        offsets = np.append(batch.feat_offsets.numpy(), len(batch.feat_idx))  # [N+1] CSR row pointers
        features = (batch.feat_idx.numpy(), batch.feat_val.numpy(), offsets)
        return torch.from_numpy(pifa(features, batch.targets, meta.num_labels, max_dim=max_dim, seed=seed))

    return TrainingSplit(meta.num_labels, seed, label_embeddings, cluster_unit_rows)
