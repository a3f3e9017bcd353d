"""kNN baseline: cosine nearest training points (FAISS), similarity-weighted label voting."""

from __future__ import annotations

import time

import faiss
import numpy as np
import scipy.sparse as sp
import torch

from xlc import data as xdata
from xlc.baselines.split import ranking_metrics, read_split, truth
from xlc.baselines._faiss import as_f32, make_index
from xlc.baselines.tree import count_sketch, label_matrix
from xlc.errors import ConfigError
from xlc.progress import progress


class KNNClassifier:
    """score(q, l) = sum over the k nearest training points j (cosine) with l in y_j of cos(q, x_j).

    `index="flat"` is exact inner product over L2-normalised features; `"hnsw"` is approximate. Predictions rank
    labels by score, ties by the lower label id; a row with fewer than `topk` voted labels is padded with -1
    (score 0), which the metrics count as a miss.
    """

    def __init__(self, k: int = 10, index: str = "flat", hnsw_m: int = 32, ef_search: int = 128):
        if k < 1:
            raise ConfigError(f"knn.k={k}: expected a positive integer")
        self.k, self.kind, self.hnsw_m, self.ef_search = k, index, hnsw_m, ef_search

    def fit(self, features, labels, num_labels: int) -> "KNNClassifier":
        x = as_f32(features)  # [N, d]
        faiss.normalize_L2(x)
        self.index = make_index(self.kind, x.shape[1], faiss.METRIC_INNER_PRODUCT, hnsw_m=self.hnsw_m,
                                ef_search=self.ef_search, field="knn.index")
        self.index.add(x)
        y = label_matrix(labels, num_labels)  # CSR [N, L]
        self.num_labels = num_labels
        self.indptr, self.indices = torch.from_numpy(y.indptr.astype(np.int64)), torch.from_numpy(y.indices.astype(np.int64))
        return self

    def predict(self, features, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [Q, topk] descending, labels [Q, topk], -1 padded)."""
        q = as_f32(features)  # [Q, d]
        faiss.normalize_L2(q)
        sims, nbrs = self.index.search(q, self.k)  # [Q, k]; -1 when fewer points than k
        sims, nbrs = torch.from_numpy(sims).double(), torch.from_numpy(nbrs)
        # expand each neighbour into its labels: one (query, label, similarity) triple per label
        ok = nbrs >= 0
        n = nbrs.clamp(min=0)
        counts = torch.where(ok, self.indptr[n + 1] - self.indptr[n], 0)  # [Q, k]
        rows = torch.arange(len(q)).repeat_interleave(counts.sum(1))  # [T]
        start = self.indptr[n][ok].repeat_interleave(counts[ok])  # [T]
        offset = torch.arange(len(start)) - (torch.cumsum(counts[ok], 0) - counts[ok]).repeat_interleave(counts[ok])
        labels = self.indices[start + offset]  # [T]
        weight = sims[ok].repeat_interleave(counts[ok])  # [T]
        keys, inverse = torch.unique(rows * self.num_labels + labels, return_inverse=True)  # sorted by (row, label)
        score = torch.zeros(len(keys), dtype=torch.float64).index_add_(0, inverse, weight)
        row, label = keys // self.num_labels, keys % self.num_labels
        order = torch.sort(-score, stable=True).indices  # score desc, label asc among ties
        order = order[torch.sort(row[order], stable=True).indices]  # then group rows, keeping that order
        row, label, score = row[order], label[order], score[order]
        pos = torch.arange(len(row)) - torch.searchsorted(row, row)  # rank within the row
        keep = pos < topk
        out_s = torch.zeros(len(q), topk, dtype=torch.float32)
        out_l = torch.full((len(q), topk), -1, dtype=torch.long)
        out_s[row[keep], pos[keep]] = score[keep].float()
        out_l[row[keep], pos[keep]] = label[keep]
        return out_s, out_l


def evaluate_knn(data_dir: str, *, k: int = 10, index: str = "flat", sketch_dim: int = 512, ks=(1, 3, 5),
                 psp_a: float = 0.55, psp_b: float = 1.5, seed: int = 0, batch_size: int = 4096) -> dict[str, float]:
    """kNN baseline on a sparse dataset directory: tf-idf rows count-sketched to `sketch_dim` dense dims,
    a FAISS index over the training rows, label voting for each test row; ranking metrics and timings."""
    meta = xdata.read_meta(data_dir)

    def dense(x: sp.csr_matrix) -> np.ndarray:
        return np.asarray(count_sketch(x, sketch_dim, seed).todense(), dtype=np.float32)

    tic = time.perf_counter()
    x, y = read_split(data_dir, "train", "knn")
    model = KNNClassifier(k=k, index=index).fit(dense(x), y, meta.num_labels)
    fit_seconds = time.perf_counter() - tic
    metrics = ranking_metrics(data_dir, ks, psp_a, psp_b)
    x, y = read_split(data_dir, "test", "knn")
    tic = time.perf_counter()
    for lo in progress(range(0, x.shape[0], batch_size), desc="knn: predict test", unit="batch"):
        _, labels = model.predict(dense(x[lo:lo + batch_size]), max(ks))
        metrics.update(labels, truth(y[lo:lo + batch_size]))
    out = metrics.compute()
    out.update(train_seconds=fit_seconds, samples_per_second=meta.num_train / max(fit_seconds, 1e-9),
               predict_seconds=time.perf_counter() - tic, head_parameters=0)
    return out
