"""Neural-collapse metrics: ~0 on collapsed features (simplex-ETF means + tiny noise), also with imbalanced
classes, clearly > 0 on random features; NC1 equal to a plain float64 two-pass reference (1/C) Tr(Sigma_W
Sigma_B^+) for both global means; NC4 equal to a brute-force argmax / nearest-mean count; tag-wise scales."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close
from xlc.errors import ConfigError
from xlc.eval.collapse import NCAccumulator, ncc_mismatch


def _etf(c: int, d: int, seed: int = 0) -> torch.Tensor:
    """[C, d] simplex ETF: unit rows with pairwise cosine -1/(C-1), rotated into d dims."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(d, c, generator=g, dtype=torch.float64))  # [d, C]
    return ((c / (c - 1)) ** 0.5 * (torch.eye(c, dtype=torch.float64) - 1.0 / c) @ u.T)  # [C, d]


def _features(means: torch.Tensor, per_class: int, noise: float, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    c, d = means.shape
    y = torch.arange(c).repeat_interleave(per_class)  # [N]
    h = means[y] + noise * torch.randn(len(y), d, generator=g, dtype=torch.float64)  # [N, d]
    perm = torch.randperm(len(y), generator=g)
    return h[perm], y[perm]


def _accumulate(h, y, c, batch=37, **kw):
    acc = NCAccumulator(c, h.shape[1], **kw)
    for lo in range(0, len(h), batch):
        acc.update(h[lo : lo + batch], y[lo : lo + batch])
    return acc


def test_collapsed_features_give_zero_metrics():
    c, d = 10, 16
    means = 3.0 * _etf(c, d)
    h, y = _features(means + 0.5, 40, noise=1e-4)  # a global offset must not matter (metrics centre)
    acc = _accumulate(h, y, c)
    w = 2.0 * _etf(c, d)  # classifier aligned with the centred means (same ETF, another scale)
    out = acc.compute(weight=w)
    for key in ("nc1", "nc2_equinorm_h", "nc2_equiangular_h", "nc2_maxangle_h", "nc2_zhu_h",
                "nc2_equinorm_w", "nc2_equiangular_w", "nc2_maxangle_w", "nc2_zhu_w", "nc3"):
        assert out[key] < 1e-3, (key, out[key])
    seen, mu = acc.class_means()
    nc4 = ncc_mismatch((h[i : i + 50] for i in range(0, len(h), 50)), mu, w[seen], bias=-(w[seen] @ (means.mean(0) + 0.5)))
    assert nc4 == 0.0


def test_random_features_are_far_from_collapse():
    c, d = 10, 16
    g = torch.Generator().manual_seed(3)
    means = torch.randn(c, d, generator=g, dtype=torch.float64)
    h, y = _features(means, 40, noise=1.0)
    acc = _accumulate(h, y, c)
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    out = acc.compute(weight=w)
    assert out["nc1"] > 0.1
    assert out["nc2_equiangular_h"] > 0.1 and out["nc2_maxangle_h"] > 0.1 and out["nc2_zhu_h"] > 0.3
    assert out["nc2_zhu_w"] > 0.3 and out["nc3"] > 0.3
    seen, mu = acc.class_means()
    assert ncc_mismatch([h], mu, w[seen]) > 0.3


@pytest.mark.parametrize("global_mean", ["class_means", "samples"])
def test_nc1_matches_two_pass_reference(global_mean):
    """Reference: Sigma_W = (1/N) sum (h - mu_y)(h - mu_y)^T, Sigma_B = (1/C) sum (mu_c - mu_G)(...)^T,
    NC1 = (1/C) Tr(Sigma_W pinv(Sigma_B)) with pinv over the top C-1 eigenpairs; mu_G = mean of the class
    means, or of the rows."""
    c, d = 6, 9
    g = torch.Generator().manual_seed(5)
    means = torch.randn(c, d, generator=g, dtype=torch.float64)
    h, y = _features(means, 25, noise=0.7)
    h, y = h[:-7], y[:-7]  # unbalanced counts
    mu = torch.stack([h[y == k].mean(0) for k in range(c)])
    mu_g = mu.mean(0) if global_mean == "class_means" else h.mean(0)
    sw = (h - mu[y]).T @ (h - mu[y]) / len(h)
    sb = (mu - mu_g).T @ (mu - mu_g) / c
    evals, evecs = torch.linalg.eigh(sb)
    top = evecs[:, -(c - 1):]
    ref = torch.trace(sw @ top @ torch.diag(1 / evals[-(c - 1):]) @ top.T) / c
    out = _accumulate(h, y, c, global_mean=global_mean).compute()
    assert_close(torch.tensor(out["nc1"], dtype=torch.float64), ref, rtol=1e-9, atol=1e-12)


def test_nc2_sampled_pairs_agree_with_all_pairs():
    c, d = 40, 50
    g = torch.Generator().manual_seed(9)
    h, y = _features(torch.randn(c, d, generator=g, dtype=torch.float64), 5, noise=0.3)
    acc = _accumulate(h, y, c, batch=64)
    exact = acc.compute()
    sampled = acc.compute(max_pairs_classes=10, num_pairs=200_000)
    for key in ("nc2_equiangular_h", "nc2_maxangle_h", "nc2_zhu_h"):
        assert sampled[key] == pytest.approx(exact[key], rel=0.05), key


def test_multi_label_restricts_to_multiplicity_one_and_tagwise_angle():
    c, d = 6, 12
    means = 2.0 * _etf(c, d)
    h1, y1 = _features(means, 30, noise=1e-3)
    pairs = torch.tensor([[a, b] for a in range(c) for b in range(a + 1, c)])  # [15, 2]
    y2 = pairs.repeat(4, 1)  # [60, 2]
    g = torch.Generator().manual_seed(2)
    avg = 0.6 * (means[y2[:, 0]] + means[y2[:, 1]])  # tag-wise average property
    h2 = avg + 1e-3 * torch.randn(len(y2), d, generator=g, dtype=torch.float64)
    y1p = torch.stack([y1, torch.full_like(y1, -1)], 1)
    h = torch.cat([h1, h2])
    y = torch.cat([y1p, y2.flip(1)])  # label order inside a row must not matter
    perm = torch.randperm(len(h), generator=g)
    acc = _accumulate(h[perm], y[perm], c)
    out = acc.compute()
    assert out["nc1"] < 1e-3 and out["nc2_maxangle_h"] < 1e-3  # pair rows do not pollute NC1/NC2
    assert out["tagwise_angle"] < 0.01
    assert len(acc.sets.keys) == 15

    bad = _accumulate(torch.cat([h1, torch.randn(len(y2), d, generator=g, dtype=torch.float64)]), torch.cat([y1p, y2]), c)
    assert bad.compute()["tagwise_angle"] > 0.3


def test_state_round_trip_equals_single_stream():
    c, d = 5, 4
    g = torch.Generator().manual_seed(4)
    h, y = _features(torch.randn(c, d, generator=g, dtype=torch.float64), 10, noise=0.5)
    a, b = _accumulate(h[:20], y[:20], c), _accumulate(h[20:], y[20:], c)
    merged = NCAccumulator(c, d)
    merged.load_state(a.state() + b.state())  # what all_reduce(SUM) gives
    assert merged.compute() == pytest.approx(_accumulate(h, y, c).compute(), rel=1e-9)


FEATURE_KEYS = ("nc1", "nc2_equinorm_h", "nc2_equiangular_h", "nc2_maxangle_h", "nc2_zhu_h", "nc3")


def test_exact_collapse_with_imbalanced_counts_scores_zero():
    """Class means on a simplex ETF (plus an offset), counts 100/5/5/5, no spread: with mu_G = the mean of
    the class means every metric is 0; the row mean is pulled toward class 0, giving NC2 max-angle 0.589 and
    NC3 0.458 (the former default, still available as global_mean="samples")."""
    c, d = 4, 6
    means = _etf(c, d) + 0.3
    y = torch.tensor([0] * 100 + [1] * 5 + [2] * 5 + [3] * 5)
    w = _etf(c, d)
    out = _accumulate(means[y], y, c).compute(weight=w)
    for key in FEATURE_KEYS:
        assert abs(out[key]) < 1e-9, (key, out[key])
    samples = _accumulate(means[y], y, c, global_mean="samples").compute(weight=w)
    assert samples["nc2_maxangle_h"] == pytest.approx(0.5894, abs=1e-4)
    assert samples["nc3"] == pytest.approx(0.4581, abs=1e-4)
    with pytest.raises(ConfigError, match="global_mean='median'"):
        NCAccumulator(c, d, global_mean="median")


def _nc4_reference(h, y, w, b, c):
    """Fraction of rows with argmax(h W^T + b) != argmin_c ||h - mu_c|| (mu from these single-label rows)."""
    mu = torch.stack([h[y == k].mean(0) for k in range(c)])
    return ((h @ w.T + b).argmax(1) != torch.cdist(h, mu).argmin(1)).double().mean().item()


@pytest.mark.parametrize("nc4_rows", [10_000, 50])
def test_nc4_equals_brute_force_on_the_kept_rows(nc4_rows):
    c, d = 5, 7
    g = torch.Generator().manual_seed(6)
    means = torch.randn(c, d, generator=g, dtype=torch.float64)
    y = torch.cat([torch.full((n,), k) for k, n in enumerate([80, 20, 9, 6, 3])])  # imbalanced
    h = means[y] + 0.8 * torch.randn(len(y), d, generator=g, dtype=torch.float64)
    w, b = torch.randn(c, d, generator=g, dtype=torch.float64), torch.randn(c, generator=g, dtype=torch.float64)
    pair_rows = torch.randn(10, d, generator=g, dtype=torch.float64)  # multi-label rows stay out of NC4
    labels = torch.cat([torch.stack([y, torch.full_like(y, -1)], 1), torch.tensor([[0, 1]] * 10)])
    acc = _accumulate(torch.cat([h, pair_rows]), labels, c, nc4_rows=nc4_rows)
    out = acc.compute(weight=w, bias=b)
    assert len(acc.kept) == min(nc4_rows, len(h))
    if nc4_rows >= len(h):
        assert out["nc4"] == pytest.approx(_nc4_reference(h, y, w, b, c), abs=1e-12)
    else:  # a sample of the rows, scored against the means of all of them
        mu = torch.stack([h[y == k].mean(0) for k in range(c)])
        kept = acc.kept
        assert all((h == row).all(1).any() for row in kept)
        want = ((kept @ w.T + b).argmax(1) != torch.cdist(kept, mu).argmin(1)).double().mean().item()
        assert out["nc4"] == pytest.approx(want, abs=1e-12)
    assert "nc4" not in acc.compute()  # no classifier, no NC4


def test_tagwise_scale_and_angle_for_sets_of_two_and_three():
    """Set means h_S = mu_G + alpha_m (1/|S|) sum_{k in S} mu~_k with alpha_2 = 1.2, alpha_3 = 1.5, classes
    imbalanced: angle ~0 and each scale recovered; random set means: angle near chance."""
    c, d = 6, 12
    means = 2.0 * _etf(c, d) + 0.5  # centred means 2 ETF, mu_G = 0.5 under the mean of class means
    y1 = torch.cat([torch.full((n,), k) for k, n in enumerate([60, 30, 10, 10, 5, 5])])
    g = torch.Generator().manual_seed(8)
    h1 = means[y1] + 1e-4 * torch.randn(len(y1), d, generator=g, dtype=torch.float64)
    sets = [[a, b] for a in range(c) for b in range(a + 1, c)] + [[0, 1, 2], [1, 3, 5], [2, 4, 5], [0, 3, 4]]
    rows, feats = [], []
    for s in sets * 3:
        scale = 1.2 if len(s) == 2 else 1.5
        feats.append(0.5 + scale * 2.0 * _etf(c, d)[s].mean(0))
        rows.append(s + [-1] * (3 - len(s)))
    h = torch.cat([h1, torch.stack(feats)])
    labels = torch.cat([torch.stack([y1, torch.full_like(y1, -1), torch.full_like(y1, -1)], 1), torch.tensor(rows)])
    perm = torch.randperm(len(h), generator=g)
    out = _accumulate(h[perm], labels[perm], c).compute()
    assert out["tagwise_angle"] < 0.01
    assert out["tagwise_scale_2"] == pytest.approx(1.2, rel=1e-3)
    assert out["tagwise_scale_3"] == pytest.approx(1.5, rel=1e-3)
    noise = torch.randn(len(feats), d, generator=g, dtype=torch.float64)
    bad = _accumulate(torch.cat([h1, noise]), labels, c).compute()
    assert bad["tagwise_angle"] > 0.3
