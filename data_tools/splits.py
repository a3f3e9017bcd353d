"""Seeded train/test splits: stratified by label (single-label) and grouped (siblings never straddle)."""

from __future__ import annotations

import numpy as np


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Bool mask [N], True = test. Each label sends about `test_fraction` of its rows to test, but always keeps
    at least one in train, so every test label occurs in train; singleton labels stay in train.

    The per-label test count is floor(f*n + u), u ~ U[0,1) per label, so small labels still average f*n.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    n = len(labels)
    order = rng.permutation(n)
    order = order[np.argsort(labels[order], kind="stable")]  # grouped by label, random within a label
    uniq, start, count = np.unique(labels[order], return_index=True, return_counts=True)
    n_test = np.floor(test_fraction * count + rng.random(len(uniq))).astype(np.int64)
    n_test = np.minimum(n_test, count - 1)  # keep one in train
    rank = np.arange(n) - np.repeat(start, count)  # position within its label group
    test = np.zeros(n, dtype=bool)
    test[order] = rank < np.repeat(n_test, count)
    return test


def group_split(groups: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Bool mask [N], True = test: whole groups (e.g. Debian source packages) go to one side, about
    `test_fraction` of the groups to test."""
    uniq, inverse = np.unique(np.asarray(groups), return_inverse=True)
    rng = np.random.default_rng(seed)
    return (rng.random(len(uniq)) < test_fraction)[inverse]


def random_split(n: int, test_fraction: float, seed: int) -> np.ndarray:
    """Bool mask [N], True = test, exactly round(f*N) test rows."""
    test = np.zeros(n, dtype=bool)
    test[np.random.default_rng(seed).permutation(n)[: round(test_fraction * n)]] = True
    return test
