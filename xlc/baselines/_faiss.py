"""FAISS plumbing shared by the kNN and ANN baselines: index construction and the GPU move."""

from __future__ import annotations

import faiss
import numpy as np
import torch

from xlc.errors import ConfigError

INDEX_KINDS = ("flat", "hnsw")


def as_f32(x) -> np.ndarray:
    """A contiguous float32 [N, d] numpy copy of a tensor or array (FAISS normalises in place)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    return np.array(x, dtype=np.float32, order="C", copy=True)


def make_index(kind: str, dim: int, metric: int, *, hnsw_m: int = 32, ef_construction: int = 200,
               ef_search: int = 128, field: str = "index") -> faiss.Index:
    """Exact `flat` (moved to the GPU when the FAISS build has one) or approximate `hnsw` (CPU only)."""
    if kind not in INDEX_KINDS:
        raise ConfigError(f"{field}={kind!r}: expected one of {', '.join(INDEX_KINDS)}")
    if kind == "flat":
        index = faiss.IndexFlat(dim, metric)
        if faiss.get_num_gpus() > 0:
            index = faiss.index_cpu_to_all_gpus(index)
        return index
    index = faiss.IndexHNSWFlat(dim, hnsw_m, metric)
    index.hnsw.efConstruction = ef_construction
    index.hnsw.efSearch = ef_search
    return index
