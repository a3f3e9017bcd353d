"""Synthetic generator: counts, power-law head, determinism, label range, learnable prototypes."""

import numpy as np
import pytest
import torch

from data_tools.builders.synthetic import build, proto_features, zipf_ranks
from xlc.data import iter_batches, label_counts, read_meta
from xlc.errors import ConfigError


def test_zipf_ranks_follow_the_power_law():
    ranks = zipf_ranks(np.random.default_rng(0), 200_000, 1000, power=1.1)
    counts = np.bincount(ranks, minlength=1000)
    assert ranks.min() >= 0 and ranks.max() < 1000
    # density ∝ r^-1.1 on [1, L+1), floored: P(rank 1) / P(rank 10) = ∫_1^2 r^-1.1 dr / ∫_10^11 r^-1.1 dr = 8.93
    expected = (1 - 2**-0.1) / (10**-0.1 - 11**-0.1)
    assert abs(counts[0] / counts[9] - expected) < 0.1 * expected


def test_build_multilabel(tmp_path):
    out = build(str(tmp_path / "syn"), samples=3000, labels=50_000, labels_per_sample=3.0, features=4096, seed=1)
    meta = read_meta(out)
    assert meta.multi_label and meta.num_train + meta.num_test == 3000 and 0.15 < meta.num_test / 3000 < 0.25
    counts = label_counts(out)
    assert len(counts) == 50_000 and counts.sum() > 3 * meta.num_train * 0.9
    assert np.sort(counts)[-1] > 20 * np.median(counts[counts > 0])  # a heavy head
    rows = [b for b in iter_batches(out, "train", 512)]
    targets = torch.cat([torch.nn.functional.pad(b.targets, (0, 30 - b.targets.shape[1]), value=-1) for b in rows])
    valid = targets[targets >= 0]
    assert (targets[:, 0] >= 0).all() and valid.max() < 50_000
    # no duplicate label within a row
    assert all(len(set(r)) == len(r) for r in (row[row >= 0].tolist() for row in targets))
    # each row's features contain its labels' prototypes
    b = rows[0]
    ends = torch.cat([b.feat_offsets[1:], torch.tensor([len(b.feat_idx)])])
    for i in range(5):
        feats = set(b.feat_idx[b.feat_offsets[i]:ends[i]].tolist())
        labels = b.targets[i][b.targets[i] >= 0].numpy()
        assert set(proto_features(labels, 8, 4096).ravel().tolist()) <= feats
        vals = b.feat_val[b.feat_offsets[i]:ends[i]].double()
        assert abs(vals.norm().item() - 1.0) < 1e-5


def test_build_is_deterministic_and_single_label(tmp_path):
    targets = lambda root: torch.cat([x.targets for x in iter_batches(root, "train", 100)])
    a = build(str(tmp_path / "a"), samples=500, labels=100, features=256, seed=3)
    b = build(str(tmp_path / "b"), samples=500, labels=100, features=256, seed=3)
    c = build(str(tmp_path / "c"), samples=500, labels=100, features=256, seed=4)
    assert not read_meta(a).multi_label
    ta = targets(a)
    assert ta.dim() == 1 and torch.equal(ta, targets(b)) and (ta >= 0).all()
    assert not torch.equal(ta[:50], targets(c)[:50])  # another seed, other rows


def test_bad_option():
    with pytest.raises(ConfigError, match="--labels=0: expected >= 1"):
        build("/tmp/never", labels=0)
