"""`lowrank` head: z = W2 W1 x + b against float64 references that materialise z `[B, C]`.

ce:  mean_i -log softmax(z_i)_y (multi-label: PAL over the distinct positives S, / |S| for pal_mean).
mse: mean_i ||z_i - t_i||^2, t_i[k] = 1 for k in S (pal_sum) or 1/|S| (pal_mean), 0 elsewhere.
top-k: sort of z, ties to the lower label.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close
from tests.heads.test_softmax import TARGETS, fit_top1, reference_loss, separable
from xlc.errors import ConfigError
from xlc.heads import build_head


def head_and_logits(seed=0, bias=True, **options):
    torch.manual_seed(seed)
    head = build_head("lowrank", 21, 5, rank=3, bias=bias, **options).double()
    if bias:
        with torch.no_grad():
            head.bias.normal_()
    w = (head.weight @ head.proj.weight).detach()  # [C, d] the rank-3 product W2 W1
    b = head.bias.detach() if bias else torch.zeros(21, dtype=torch.float64)
    return head, w, b


def reference_mse(x, w, b, targets, reduction):
    z = x @ w.T + b  # [B, C]
    t = torch.zeros_like(z)
    for i, row in enumerate(targets.view(len(targets), -1).tolist()):
        labels = sorted({k for k in row if k >= 0})
        t[i, labels] = 1.0 / len(labels) if labels and reduction == "pal_mean" else 1.0
    return (z - t).pow(2).sum(1).mean()


def _grads(head, x, loss):
    params = [x, head.proj.weight, head.weight] + ([head.bias] if head.bias is not None else [])
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("reduction", ["pal_mean", "pal_sum"])
@pytest.mark.parametrize("bias,chunk", [(True, 4), (False, None)])
def test_loss_and_gradients_match_reference(loss, kind, reduction, bias, chunk):
    head, _, _ = head_and_logits(bias=bias, loss=loss, chunk=chunk, multi_label_loss=reduction)
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    got = head.loss(x, TARGETS[kind])
    w = head.weight @ head.proj.weight  # [C, d] with the graph to W1 and W2
    b = head.bias if bias else torch.zeros(21, dtype=torch.float64)
    fn = reference_mse if loss == "mse" else reference_loss
    want = fn(x, w, b, TARGETS[kind], reduction)
    assert_close(got, want, atol=1e-12, rtol=1e-12)
    for g, r in zip(_grads(head, x, got), _grads(head, x, want)):
        assert_close(g, r, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("chunk", [1, 6, None])
def test_topk_equals_brute_force(chunk):
    head, w, b = head_and_logits(chunk=chunk)
    x = torch.randn(7, 5, dtype=torch.float64)
    ref_scores, ref_labels = (x @ w.T + b).sort(dim=1, descending=True, stable=True)
    for k in (1, 4, 21):
        scores, labels = head.topk(x, k)
        assert_close(scores, ref_scores[:, :k], atol=1e-12, rtol=1e-12)
        assert torch.equal(labels, ref_labels[:, :k])


def test_product_has_the_bottleneck_rank():
    head, w, _ = head_and_logits()
    assert int(torch.linalg.matrix_rank(w)) == 3


def test_rank_two_trains_under_ce_but_not_under_mse():
    """MHE's low-rank claim on 16 separable classes: a rank-2 bottleneck reaches ~100% train top-1 with CE,
    while the Frobenius (MSE) fit of one-hot targets, whose best rank-2 answer is a truncated SVD, cannot."""
    x, y = separable()
    acc = {}
    for loss in ("ce", "mse"):
        torch.manual_seed(0)
        acc[loss] = fit_top1(build_head("lowrank", 16, 8, rank=2, loss=loss, chunk=5), x, y, steps=300)
    assert acc["ce"] > 0.95 and acc["mse"] < 0.5, acc


def test_user_errors():
    with pytest.raises(ConfigError, match="head.rank=0"):
        build_head("lowrank", 10, 4, rank=0)
    with pytest.raises(ConfigError, match="loss='bce'"):
        build_head("lowrank", 10, 4, loss="bce")
