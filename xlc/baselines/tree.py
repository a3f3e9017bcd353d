"""PECOS-style label tree: PIFA label embeddings, then recursive balanced spherical k-means with FAISS.

`build_hierarchy(...)` returns the `xlc.heads.tree.LabelHierarchy` that `TreeHead(hierarchy=...)` takes:
`parents[l]` (LongTensor [n_l]) maps level-l clusters to level l-1 (level 0 -> root 0), and
`label_to_leaf` (LongTensor [num_labels]) maps labels to last-level clusters.
"""

from __future__ import annotations

import faiss
import numpy as np
import scipy.sparse as sp
import torch

from xlc.errors import ConfigError, DataError
from xlc.heads.tree import LabelHierarchy, clustered_hierarchy

KMEANS_ITERS = 20  # PECOS kmeans_max_iter
BALANCE_ROUNDS = 3  # balanced assignment <-> centroid refits after FAISS k-means


def as_csr(features) -> sp.csr_matrix:
    """Features as float32 CSR [N, D] from scipy sparse, a dense array/tensor, or (indices, values, offsets)
    flat arrays where row i holds indices[offsets[i]:offsets[i+1]] (offsets has N+1 entries)."""
    if isinstance(features, tuple):
        if len(features) != 3:
            raise ConfigError("features: a tuple must be (indices, values, offsets)")
        idx, val, off = (np.asarray(torch.as_tensor(a)) for a in features)
        dim = int(idx.max()) + 1 if len(idx) else 1
        return sp.csr_matrix((val.astype(np.float32), idx, off), shape=(len(off) - 1, dim))
    if sp.issparse(features):
        return sp.csr_matrix(features, dtype=np.float32)
    return sp.csr_matrix(np.asarray(torch.as_tensor(features).detach().cpu(), dtype=np.float32))


def label_matrix(labels, num_labels: int) -> sp.csr_matrix:
    """Binary CSR [N, L] from [N] / padded [N, M] labels (-1 = none), a list of label lists, or a CSR matrix."""
    if sp.issparse(labels):
        y = sp.csr_matrix(labels, dtype=np.float32)
    else:
        if isinstance(labels, list) and labels and isinstance(labels[0], (list, tuple)):
            width = max(1, max(len(r) for r in labels))
            labels = [list(r) + [-1] * (width - len(r)) for r in labels]
        arr = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
        arr = arr[:, None] if arr.ndim == 1 else arr
        rows, cols = np.nonzero(arr >= 0)
        bad = (arr < -1) | (arr >= num_labels)
        if bad.any():
            raise DataError(f"labels row {int(np.nonzero(bad)[0][0])}: values must lie in [0, {num_labels}) or be -1")
        y = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, arr[rows, cols])), shape=(len(arr), num_labels))
    y.data[:] = 1.0  # repeated labels collapse to one
    return y


def count_sketch(x: sp.csr_matrix, max_dim: int, seed: int = 0) -> sp.csr_matrix:
    """Project CSR [N, D] to [N, max_dim] by a seeded count sketch (feature j -> bucket h(j), sign s(j)), which
    preserves inner products in expectation; identity when D <= max_dim."""
    if x.shape[1] <= max_dim:
        return x
    rng = np.random.default_rng(seed)
    bucket, sign = rng.integers(0, max_dim, x.shape[1]), rng.choice([-1.0, 1.0], x.shape[1])
    return x @ sp.csr_matrix((sign.astype(np.float32), (np.arange(x.shape[1]), bucket)), shape=(x.shape[1], max_dim))


def pifa(features, labels, num_labels: int, max_dim: int = 512, seed: int = 0) -> np.ndarray:
    """PIFA embeddings [L, D'] float32, unit rows: sum of the L2-normalised features of each label's positives.

    When D > `max_dim` the sparse sums are projected by a seeded count sketch (feature j -> bucket h(j) with
    sign s(j)), which preserves inner products in expectation, so no dense [L, D] matrix is formed.
    """
    x = as_csr(features)
    y = label_matrix(labels, num_labels)
    if x.shape[0] != y.shape[0]:
        raise ConfigError(f"features have {x.shape[0]} rows but labels have {y.shape[0]}: they must match")
    norms = np.sqrt(np.asarray(x.multiply(x).sum(1)).ravel())  # [N]
    x = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ x
    x = count_sketch(x, max_dim, seed)
    z = np.asarray((y.T @ x).todense(), dtype=np.float32)  # [L, D']
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    # a label with no training positives gets a random direction, so it still lands in some leaf
    empty = norms[:, 0] == 0
    if empty.any():
        z[empty] = np.random.default_rng(seed + 1).standard_normal((int(empty.sum()), z.shape[1]))
        norms = np.linalg.norm(z, axis=1, keepdims=True)
    return z / norms


def balanced_assign(sim: np.ndarray) -> np.ndarray:
    """Assign n points to k clusters of sizes ceil/floor(n/k) greedily by similarity [n, k]; returns [n].

    Rounds: every unassigned point proposes to its most similar open cluster; each cluster accepts its most
    similar proposers up to its remaining capacity; at least one cluster fills or every point lands per round.
    """
    n, k = sim.shape
    cap = np.full(k, n // k) + (np.arange(k) < n % k)
    out = np.full(n, -1)
    open_ = np.ones(k, dtype=bool)
    while (out < 0).any():
        todo = np.nonzero(out < 0)[0]
        s = np.where(open_[None, :], sim[todo], -np.inf)  # [t, k]
        choice = s.argmax(1)
        order = np.lexsort((-s[np.arange(len(todo)), choice], choice))  # by cluster, then best first
        choice, todo = choice[order], todo[order]
        first = np.searchsorted(choice, choice)  # start of each cluster's run
        accept = (np.arange(len(choice)) - first) < cap[choice]
        out[todo[accept]] = choice[accept]
        cap -= np.bincount(choice[accept], minlength=k)
        open_ = cap > 0
    return out


def spherical_split(emb: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Balanced spherical k-means of unit rows [n, d] into k parts; returns cluster ids [n]."""
    n, d = emb.shape
    if k >= n:
        return np.arange(n) % k
    km = faiss.Kmeans(d, k, niter=KMEANS_ITERS, spherical=True, seed=seed, verbose=False,
                      gpu=faiss.get_num_gpus() > 0, min_points_per_centroid=1, max_points_per_centroid=1 << 20)
    km.train(np.ascontiguousarray(emb, dtype=np.float32))
    centroids = km.centroids
    for _ in range(BALANCE_ROUNDS):
        assign = balanced_assign(emb @ centroids.T)
        centroids = np.zeros((k, d), np.float32)
        np.add.at(centroids, assign, emb)
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return balanced_assign(emb @ centroids.T)


def build_hierarchy(features, labels, num_labels: int, branching: int = 16, leaf_size: int = 100, seed: int = 0,
                    max_dim: int = 512) -> LabelHierarchy:
    """Label tree from training data: PIFA embeddings split recursively into `branching` balanced spherical
    k-means clusters per node, to depth `tree_depth(num_labels, branching, leaf_size)` (at most about
    `leaf_size` labels per leaf). `features`: scipy CSR / dense [N, D] / (indices, values, offsets);
    `labels`: [N] or padded [N, M] (-1 = none), a list of label lists, or a CSR label matrix [N, L]."""
    emb = torch.from_numpy(pifa(features, labels, num_labels, max_dim=max_dim, seed=seed))
    return clustered_hierarchy(emb, branching, leaf_size, seed, cluster_unit_rows)


def cluster_unit_rows(points: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """`spherical_split` on tensors: ids [n] of a balanced spherical k-means of unit rows [n, d] into k parts."""
    return torch.from_numpy(spherical_split(points.numpy(), k, seed)).long()


__all__ = ["as_csr", "count_sketch", "balanced_assign", "build_hierarchy", "cluster_unit_rows", "label_matrix", "pifa", "spherical_split"]
