"""Split properties: stratified keeps every test label in train; groups never straddle."""

import numpy as np

from data_tools.splits import group_split, random_split, stratified_split


def test_stratified_split_keeps_test_labels_in_train():
    rng = np.random.default_rng(0)
    labels = (rng.pareto(1.0, 20_000) * 3).astype(int)  # power law: many singletons
    test = stratified_split(labels, 0.2, seed=1)
    assert set(labels[test]) <= set(labels[~test])
    assert abs(test.mean() - 0.2) < 0.03
    counts = np.bincount(labels)
    assert not test[np.isin(labels, np.flatnonzero(counts == 1))].any()
    assert (stratified_split(labels, 0.2, seed=1) == test).all() and (stratified_split(labels, 0.2, 2) != test).any()


def test_group_split_never_straddles():
    groups = np.repeat(np.arange(500), 4)
    test = group_split(groups, 0.3, seed=0)
    assert (test.reshape(500, 4).all(1) | ~test.reshape(500, 4).any(1)).all()
    assert 0.2 < test.mean() < 0.4


def test_random_split_size():
    assert random_split(1000, 0.25, seed=0).sum() == 250
