"""`xlc.heads.scored`: NC metrics read the features each head's classifier scores and its C x d rows."""

from __future__ import annotations

import torch

from tests.helpers import assert_close
from xlc.eval import NCAccumulator
from xlc.heads import build_head
from xlc.heads.scored import classifier_rows, scored_view


def test_linear_head_scores_the_backbone_features_with_its_weight_and_bias():
    head = build_head("softmax", 7, 5)
    h = torch.randn(3, 5)
    assert scored_view(head, h) is h
    rows, bias = classifier_rows(head, 7)
    assert rows.dtype == torch.float64 and rows.shape == (7, 5) and bias.shape == (7,)
    assert_close(rows, head.weight.double())


def test_etf_head_scores_its_normalised_embedding_against_the_fixed_etf():
    head = build_head("etf", 4, 6).eval()
    h = torch.randn(10, 6)
    assert_close(scored_view(head, h), head.embed(h))
    rows, bias = classifier_rows(head, 4)
    assert bias is None and rows.shape == (4, 6)
    assert_close(rows, head.etf.T.double())


def test_collapsed_etf_features_score_zero_in_the_view_that_etf_scores():
    """Features whose embedding is exactly the ETF column of their class: NC1 = 0, NC3 = 0, NC4 = 0 there,
    with imbalanced classes (100/5/5/5 rows)."""
    head = build_head("etf", 4, 6).eval()
    head.bn.running_mean.zero_()
    head.bn.running_var.fill_(1 - head.bn.eps)  # BatchNorm is then the identity in eval mode
    y = torch.tensor([0] * 100 + [1] * 5 + [2] * 5 + [3] * 5)
    h = 3.0 * head.etf.T[y]  # [N, d], any positive scale: the embedding normalises it
    rows, bias = classifier_rows(head, 4)
    acc = NCAccumulator(4, 6)
    acc.update(scored_view(head, h).double(), y)
    nc = acc.compute(rows, bias)
    assert nc["nc1"] < 1e-10 and nc["nc3"] < 1e-6 and nc["nc4"] == 0.0


def test_heads_without_one_dot_product_matrix_get_feature_metrics_only():
    for name, options in (("rbf", {}), ("mhp", {"num_heads": 2}), ("lowrank", {"rank": 2})):
        head = build_head(name, 9, 4, **options)
        h = torch.randn(2, 4)
        assert scored_view(head, h) is h and classifier_rows(head, 9) is None, name
