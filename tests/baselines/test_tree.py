"""PECOS-style label tree: PIFA against a plain float64 loop, balanced assignment, recovery of a planted
hierarchy from sparse features, and the hierarchy driving a TreeHead."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from xlc.baselines.tree import balanced_assign, build_hierarchy, pifa
from xlc.heads import build_head


def test_pifa_matches_loop_for_all_input_forms():
    """Reference: z_l = sum_{i: l in y_i} x_i / ||x_i||, then z_l / ||z_l||."""
    rng = np.random.default_rng(0)
    x = rng.random((12, 7)) * (rng.random((12, 7)) < 0.5)
    x[:, 0] += 0.1  # no empty rows
    y = [[0, 2], [1], [2], [0], [3, 1], [2, 2], [0], [1], [3], [0, 3], [1], [2]]
    ref = np.zeros((4, 7))
    for xi, yi in zip(x, y):
        for lab in set(yi):
            ref[lab] += xi / np.linalg.norm(xi)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    csr = sp.csr_matrix(x)
    padded = torch.tensor([r + [-1] * (2 - len(r)) for r in y])
    for feats in (x, torch.from_numpy(x), csr, (csr.indices, csr.data, csr.indptr)):
        np.testing.assert_allclose(pifa(feats, padded, 4), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pifa(csr, y, 4), ref, rtol=1e-5, atol=1e-6)


def test_balanced_assign_sizes_and_preference():
    rng = np.random.default_rng(1)
    sim = rng.standard_normal((103, 8))
    a = balanced_assign(sim)
    assert sorted(np.bincount(a, minlength=8).tolist()) == [12] * 1 + [13] * 7
    easy = np.repeat(np.eye(4), 5, axis=0)  # already balanced: keep everyone's favourite
    assert (balanced_assign(easy) == np.repeat(np.arange(4), 5)).all()


def _planted(num_groups=8, per_group=40, dim=2000, n=3000, seed=0):
    """Labels in groups; each group owns a block of sparse features, so PIFA of same-group labels is close."""
    rng = np.random.default_rng(seed)
    num_labels = num_groups * per_group
    perm = rng.permutation(num_labels)  # label ids do not reveal the group
    group = np.empty(num_labels, dtype=np.int64)
    group[perm] = np.arange(num_labels) // per_group
    block = dim // num_groups
    y = rng.integers(0, num_labels, (n, 2))
    y[:, 1] = np.where(rng.random(n) < 0.5, -1, perm[group[y[:, 0]] * per_group + rng.integers(0, per_group, n)])
    rows, cols, vals = [], [], []
    for i in range(n):
        g = group[y[i, 0]]
        f = g * block + rng.integers(0, block, 12)  # 12 features from the group's block
        f = np.concatenate([f, rng.integers(0, dim, 2)])  # plus a little noise anywhere
        rows += [i] * len(f)
        cols += f.tolist()
        vals += rng.random(len(f)).tolist()
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, dim)), y, group, num_labels


def test_recovers_planted_hierarchy_from_sparse_features():
    x, y, group, num_labels = _planted()
    h = build_hierarchy(x, y, num_labels, branching=8, leaf_size=10, seed=0, max_dim=256)  # 2000 dims -> sketch
    assert [len(p) for p in h.parents] == [8, 64]
    top = h.parents[1][h.label_to_leaf].numpy()  # level-0 cluster of each label
    # every planted group maps to exactly one top cluster and vice versa
    for g in range(8):
        assert len(np.unique(top[group == g])) == 1, g
    assert len(np.unique(top)) == 8
    sizes = np.bincount(h.label_to_leaf.numpy())
    assert sizes.min() == 5 and sizes.max() == 5  # 320 labels / 64 leaves, balanced
    assert (h.parents[0] == 0).all() and (np.bincount(h.parents[1].numpy()) == 8).all()


def test_hierarchy_feeds_tree_head_and_is_deterministic():
    x, y, _, num_labels = _planted(num_groups=4, per_group=10, dim=400, n=400, seed=3)
    h1 = build_hierarchy(x, y, num_labels, branching=4, leaf_size=5, seed=7)
    h2 = build_hierarchy(x, y, num_labels, branching=4, leaf_size=5, seed=7)
    assert all((a == b).all() for a, b in zip(h1.parents, h2.parents)) and (h1.label_to_leaf == h2.label_to_leaf).all()
    head = build_head("tree", num_labels, 16, hierarchy=h1)
    scores, labels = head.topk(torch.randn(3, 16, generator=torch.Generator().manual_seed(0)), 5)
    assert labels.shape == scores.shape == (3, 5) and (labels >= 0).all() and (labels < num_labels).all()
    assert all(len(set(row)) == 5 for row in labels.tolist())  # five distinct labels per row
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # best first
