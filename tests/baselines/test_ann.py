"""ANN top-k over a softmax classifier: the flat index is exact, HNSW recall against exact top-k is high."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close
from xlc.baselines.ann import ANNTopK, ann_recall


def _classifier(c=5000, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c, d, generator=g) * (0.5 + torch.rand(c, 1, generator=g))  # unequal row norms: real MIPS
    b = 0.3 * torch.randn(c, generator=g)
    h = torch.randn(64, d, generator=g)
    return w, b, h


def test_flat_index_equals_exact_topk():
    w, b, h = _classifier(c=800)
    scores, labels = ANNTopK(w, b, index="flat").topk(h, 10)
    ref_s, ref_l = (h @ w.T + b).topk(10, dim=1)  # [64, 800] is fine at this size
    assert (labels == ref_l).all()
    assert_close(scores, ref_s, atol=1e-4, rtol=1e-5)


def test_hnsw_recall_is_high_and_report_has_timings():
    w, b, h = _classifier()
    ann = ANNTopK(w, b, index="hnsw", ef_search=64)
    report = ann_recall(ann, h, 10)
    assert report["recall@10"] > 0.95, report
    assert report["speedup"] == pytest.approx(report["exact_seconds"] / report["ann_seconds"])
    scores, labels = ann.topk(h, 10)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    assert all(len(set(r)) == 10 for r in labels.tolist())
    exact = torch.gather(h @ w.T + b, 1, labels)  # returned scores are the exact logits of returned labels
    assert_close(scores, exact, atol=1e-4, rtol=1e-5)
