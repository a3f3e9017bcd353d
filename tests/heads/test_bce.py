"""`bce` head against a float64 reference: mean over rows of sum_j BCEWithLogits(z_j, y_j) (/ C for "mean")."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_close
from tests.heads.test_softmax import TARGETS, fit_top1, separable
from xlc.errors import ConfigError, DataError
from xlc.heads import build_head


def reference_loss(x, w, b, targets, label_reduction):
    z = x.double() @ w.double().T + b.double()  # [B, C]
    y = torch.zeros_like(z)
    for i, row in enumerate(targets.view(len(targets), -1).tolist()):
        for t in row:
            if t >= 0:
                y[i, t] = 1.0
    per = F.binary_cross_entropy_with_logits(z, y, reduction="none").sum(1)
    return (per / z.shape[1] if label_reduction == "mean" else per).mean()


@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("label_reduction", ["sum", "mean"])
@pytest.mark.parametrize("chunk", [1, 4, None])
def test_loss_and_grads_match_reference(kind, label_reduction, chunk):
    torch.manual_seed(0)
    head = build_head("bce", 21, 5, chunk=chunk, label_reduction=label_reduction).double()
    with torch.no_grad():
        head.bias.normal_()
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    loss = head.loss(x, TARGETS[kind])
    grads = torch.autograd.grad(loss, (x, head.weight, head.bias))
    w, b = head.weight.detach().requires_grad_(), head.bias.detach().requires_grad_()
    want = reference_loss(x, w, b, TARGETS[kind], label_reduction)
    assert_close(loss, want)
    for got, ref in zip(grads, torch.autograd.grad(want, (x, w, b))):
        assert_close(got, ref)


def test_bias_starts_at_the_label_prior_and_topk_ranks_by_logit():
    head = build_head("bce", 50, 6).double()
    assert_close(head.bias, torch.full((50,), -math.log(50)))
    assert build_head("bce", 50, 6, bias=False).bias is None
    x = torch.randn(7, 6, dtype=torch.float64)
    s, i = head.topk(x, 5)
    want_s, want_i = torch.topk(x @ head.weight.T + head.bias, 5, dim=1)
    assert torch.equal(i, want_i)
    assert_close(s, want_s)


def test_user_errors():
    with pytest.raises(ConfigError, match="label_reduction='avg'"):
        build_head("bce", 10, 4, label_reduction="avg")
    with pytest.raises(ConfigError, match="multi_label_loss"):
        build_head("bce", 10, 4, multi_label_loss="pal_sum")
    with pytest.raises(DataError, match="row 0"):
        build_head("bce", 10, 4).loss(torch.randn(1, 4), torch.tensor([[-2, 1]]))


def test_training_separates_classes():
    x, y = separable()
    torch.manual_seed(0)
    assert fit_top1(build_head("bce", 16, 8, chunk=5), x, y) > 0.97
    multi = torch.stack([y, (y + 1) % 16, torch.full_like(y, -1)], dim=1)
    assert fit_top1(build_head("bce", 16, 8, label_reduction="mean"), x, multi, lr=0.1) > 0.97
