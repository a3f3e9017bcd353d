"""Ranking metrics against hand-computed cases, plain float64 loops, and napkinXC's `metrics` module.

napkinXC conventions checked here: P@k = (1/k) sum hits; nDCG@k normalised by the ideal DCG over
min(k, |y|) labels with 0 for label-less rows; PSP@k normalised = sum(PSP@k) / sum(best PSP@k) over rows;
Jain et al. inverse propensity. One difference: napkinXC counts a label repeated in a prediction row once
per occurrence (in a ranking or in a truth row), xlc counts it once, so comparisons use duplicate-free rows.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.helpers import assert_close
from xlc.errors import ConfigError
from xlc.eval import RankingMetrics, accuracy, inv_propensity, ndcg_at_k, precision_at_k, psp_at_k

nxc = pytest.importorskip("napkinxc.metrics")


def test_hand_computed_single_label():
    pred = torch.tensor([[3, 1, 2], [0, 2, 1], [1, 0, 3]])
    truth = torch.tensor([3, 2, 2])
    assert precision_at_k(pred, truth, 1) == pytest.approx(1 / 3)
    assert precision_at_k(pred, truth, 3) == pytest.approx((1 + 1 + 0) / 9)
    assert accuracy(pred, truth) == pytest.approx(1 / 3)
    # row 0: hit at rank 1 -> 1; row 1: hit at rank 2 -> 1/log2(3); row 2: none
    assert ndcg_at_k(pred, truth, 3) == pytest.approx((1 + 1 / math.log2(3)) / 3)


def test_hand_computed_multi_label_with_padding_and_empty_row():
    pred = torch.tensor([[5, 1, 7], [2, 3, 4], [0, 1, 2]])
    truth = torch.tensor([[1, 7, -1], [9, -1, -1], [-1, -1, -1]])
    assert precision_at_k(pred, truth, 3) == pytest.approx((2 / 3) / 3)
    # row 0: DCG = 1/log2(3) + 1/log2(4); ideal over 2 labels = 1 + 1/log2(3); others 0
    expected = (1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3)) / 3
    assert ndcg_at_k(pred, truth, 3) == pytest.approx(expected)
    q = torch.arange(1.0, 11.0, dtype=torch.float64)  # q_l = l + 1
    # row 0: PSP@3 = (2 + 8)/3, best = (8 + 2)/3; row 1: 0, best 10/3; row 2: 0, 0
    assert psp_at_k(pred, truth, 3, q) == pytest.approx(10 / 20)
    assert psp_at_k(pred, truth, 3, q, normalized=False) == pytest.approx(10 / 3 / 3)


def test_padding_and_repeats_never_hit():
    pred = torch.tensor([[-1, 4, 4]])
    truth = torch.tensor([[4, 4, -1]])
    assert precision_at_k(pred, truth, 3) == pytest.approx(1 / 3)  # one true label, counted once
    assert ndcg_at_k(pred, truth, 3) == pytest.approx(1 / math.log2(3))  # ideal over |{4}| = 1 label


def _reference(pred, truth, k, q):
    """Plain float64 loops over rows, systems.md §5."""
    p = d = ps = best = 0.0
    for row_p, row_t in zip(pred.tolist(), truth.tolist()):
        t = {x for x in row_t if x >= 0}
        hits = [1.0 if x in t else 0.0 for x in row_p[:k]]
        p += sum(hits) / k
        ideal = sum(1 / math.log2(r + 2) for r in range(min(k, len(t))))
        d += sum(h / math.log2(r + 2) for r, h in enumerate(hits)) / ideal if ideal else 0.0
        ps += sum(h * q[x] for h, x in zip(hits, row_p[:k])) / k
        best += sum(sorted((q[x] for x in t), reverse=True)[:k]) / k
    n = len(pred)
    return p / n, d / n, ps / best


def _random_case(seed, n=200, labels=50, m=6, kmax=5):
    g = torch.Generator().manual_seed(seed)
    pred = torch.stack([torch.randperm(labels, generator=g)[:kmax] for _ in range(n)])  # distinct per row
    truth = torch.randint(0, labels, (n, m), generator=g)
    truth[torch.rand(n, m, generator=g) < 0.4] = -1
    counts = torch.randint(0, 100, (labels,), generator=g)
    return pred, truth, counts


@pytest.mark.parametrize("k", [1, 3, 5])
def test_against_reference_and_napkinxc(k):
    pred, truth, counts = _random_case(k)
    q = inv_propensity(counts, 1000)
    p_ref, d_ref, ps_ref = _reference(pred, truth, k, q.tolist())
    assert precision_at_k(pred, truth, k) == pytest.approx(p_ref, rel=1e-12)
    assert ndcg_at_k(pred, truth, k) == pytest.approx(d_ref, rel=1e-12)
    assert psp_at_k(pred, truth, k, q) == pytest.approx(ps_ref, rel=1e-12)

    y_true = [sorted({x for x in row if x >= 0}) for row in truth.tolist()]  # napkinXC counts repeats twice
    y_pred = pred.tolist()
    assert precision_at_k(pred, truth, k) == pytest.approx(nxc.precision_at_k(y_true, y_pred, k=k)[k - 1])
    assert ndcg_at_k(pred, truth, k) == pytest.approx(nxc.ndcg_at_k(y_true, y_pred, k=k)[k - 1])
    assert psp_at_k(pred, truth, k, q) == pytest.approx(nxc.psprecision_at_k(y_true, y_pred, q.numpy(), k=k)[k - 1])


def test_inv_propensity_matches_napkinxc():
    y = [[0, 1], [1], [1, 2], [3], [1], [0]]
    counts = np.bincount([x for r in y for x in r], minlength=5)  # label 4 never seen
    for a, b in ((0.55, 1.5), (0.6, 2.6)):
        ref = np.asarray(nxc.Jain_et_al_inverse_propensity(y, A=a, B=b), dtype=np.float64)  # labels 0..3
        assert_close(inv_propensity(counts, len(y), a=a, b=b)[:4], torch.from_numpy(ref), rtol=1e-12, atol=0)
    c = (math.log(6) - 1) * 2.5**0.55
    assert inv_propensity(counts, 6)[4].item() == pytest.approx(1 + c * 1.5**-0.55)


def test_streaming_accumulator_equals_one_shot_and_merges():
    pred, truth, counts = _random_case(7, n=301)
    q = inv_propensity(counts, 1000)
    a, b = RankingMetrics((1, 3, 5), q), RankingMetrics((5, 3, 1), q)
    for lo in range(0, 150, 40):
        a.update(pred[lo:min(lo + 40, 150)], truth[lo:min(lo + 40, 150)])
    b.update(pred[150:], truth[150:])
    merged = a.merge(b).compute()
    assert set(merged) == {"p@1", "p@3", "p@5", "ndcg@1", "ndcg@3", "ndcg@5", "psp@1", "psp@3", "psp@5", "acc"}
    for k in (1, 3, 5):
        assert merged[f"p@{k}"] == pytest.approx(precision_at_k(pred, truth, k), rel=1e-12)
        assert merged[f"ndcg@{k}"] == pytest.approx(ndcg_at_k(pred, truth, k), rel=1e-12)
        assert merged[f"psp@{k}"] == pytest.approx(psp_at_k(pred, truth, k, q), rel=1e-12)
    assert merged["acc"] == pytest.approx(accuracy(pred, truth))
    c = RankingMetrics((1, 3, 5), q)
    c.load_state(a.state())  # what a distributed caller does after all_reduce(SUM)
    assert c.compute() == merged


def test_perfect_ranking_scores_one():
    truth = torch.tensor([[2, 0, -1], [1, -1, -1]])
    pred = torch.tensor([[0, 2, 1], [1, 0, 2]])  # every true label ranked above every other
    q = torch.tensor([1.0, 5.0, 3.0])
    assert ndcg_at_k(pred, truth, 3) == pytest.approx(1.0)
    assert ndcg_at_k(pred, truth, 2) == pytest.approx(1.0)  # row 1's ideal DCG covers its one label only
    assert psp_at_k(torch.tensor([[2, 0, 1], [1, 0, 2]]), truth, 3, q) == pytest.approx(1.0)
    # P@k still divides by k: row 0 has 2 hits in 2, row 1 one hit in 2, so a perfect ranking scores 0.75 at k=2
    assert precision_at_k(pred, truth, 2) == pytest.approx((2 / 2 + 1 / 2) / 2)


def test_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="k=4"):
        precision_at_k(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long), 4)
    with pytest.raises(ConfigError, match="rows"):
        precision_at_k(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, dtype=torch.long), 1)
    with pytest.raises(ConfigError, match="inv_propensity"):
        psp_at_k(torch.tensor([[5]]), torch.tensor([5]), 1, torch.ones(3))
