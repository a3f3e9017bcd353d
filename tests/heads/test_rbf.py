"""`rbf` head: z_j = s * exp(-||x - W_j||^2 / gamma) and CE / PAL over z, against float64 references."""

from __future__ import annotations

import functools

import pytest
import torch

from tests.helpers import assert_close
from tests.heads.test_softmax import TARGETS, fit_top1, separable
from xlc.errors import ConfigError
from xlc.heads import build_head
from xlc.heads._chunked import chunked_cross_entropy
from xlc.heads.rbf import rbf_logits


def reference_logits(x, w, scale, gamma):
    """The broadcast form the paper's code uses: [B, C, d] differences."""
    return scale * torch.exp(-((x[:, None, :] - w[None, :, :]) ** 2).sum(-1) / gamma)


def test_logits_match_the_broadcast_form():
    x, w = torch.randn(6, 5, dtype=torch.float64), torch.randn(9, 5, dtype=torch.float64)
    assert_close(rbf_logits(x, w, None, scale=35.0, gamma=16.0), reference_logits(x, w, 35.0, 16.0))
    assert_close(rbf_logits(w[:3], w, None, scale=2.0, gamma=1.0).diagonal(), torch.full((3,), 2.0))  # d clamps to 0


@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("reduction", ["pal_mean", "pal_sum"])
def test_gradcheck(kind, reduction):
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(21, 3, dtype=torch.float64, requires_grad=True)
    fn = functools.partial(rbf_logits, scale=4.0, gamma=3.0)
    loss = lambda x, w: chunked_cross_entropy(x, w, None, TARGETS[kind], chunk=4, logit_fn=fn, reduction=reduction)  # noqa: E731
    assert torch.autograd.gradcheck(loss, (x, w))


@pytest.mark.parametrize("chunk", [1, 5, None])
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_head_loss_and_grads_match_reference(chunk, kind):
    torch.manual_seed(0)
    head = build_head("rbf", 21, 5, chunk=chunk, scale=10.0, gamma=4.0, multi_label_loss="pal_sum").double()
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    loss = head.loss(x, TARGETS[kind])
    grads = torch.autograd.grad(loss, (x, head.weight))
    w = head.weight.detach().requires_grad_()
    y = torch.zeros(6, 21, dtype=torch.float64)
    for i, row in enumerate(TARGETS[kind].view(6, -1).tolist()):
        y[i, [t for t in row if t >= 0]] = 1.0
    want = -(y * torch.log_softmax(reference_logits(x, w, 10.0, 4.0), 1)).sum(1).mean()
    assert_close(loss, want)
    for got, ref in zip(grads, torch.autograd.grad(want, (x, w))):
        assert_close(got, ref)


def test_topk_is_the_nearest_prototypes():
    head = build_head("rbf", 40, 6, chunk=7).double()
    x = head.weight.detach()[[3, 17, 39]] + 0.01
    dist = torch.cdist(x, head.weight.detach())  # [3, 40]
    s, i = head.topk(x, 4)
    assert torch.equal(i, dist.topk(4, largest=False).indices)
    assert_close(s, head.scale * torch.exp(-dist.gather(1, i) ** 2 / head.gamma))
    assert not hasattr(head, "bias") or head.bias is None


def test_defaults_and_user_errors():
    head = build_head("rbf", 10, 4)
    assert (head.scale, head.gamma) == (35.0, 8.0)  # gamma = 2 * in_dim
    with pytest.raises(ConfigError, match="head.gamma=0"):
        build_head("rbf", 10, 4, gamma=0)
    with pytest.raises(ConfigError, match="head.bias"):
        build_head("rbf", 10, 4, bias=True)


def test_bfloat16_features():
    head = build_head("rbf", 30, 8)
    x = torch.randn(4, 8)
    xb = x.bfloat16().requires_grad_()
    loss = head.loss(xb, torch.tensor([0, 5, 9, 29]))
    loss.backward()
    assert loss.dtype == torch.float32 and xb.grad.dtype == torch.bfloat16
    assert_close(loss, head.loss(x, torch.tensor([0, 5, 9, 29])), atol=0.05, rtol=0.02)


def test_training_separates_classes():
    x, y = separable()
    torch.manual_seed(0)
    assert fit_top1(build_head("rbf", 16, 8, chunk=5), x, y) > 0.97


def test_default_gamma_trains_on_layernorm_features():
    """512-d LayerNorm features (||x - w||^2 ~ 512 at init): with gamma = 16 every logit is s * e^-32 ~ 1e-13
    and nothing moves; the default gamma = 2 * in_dim starts near s * e^-1/2 and separates 10 classes in 60 steps."""
    torch.manual_seed(0)
    num_labels, dim = 10, 512
    y = torch.arange(num_labels).repeat(20)  # [200]
    x = torch.nn.functional.layer_norm(torch.randn(num_labels, dim)[y] + 0.5 * torch.randn(len(y), dim), (dim,))
    paper = build_head("rbf", num_labels, dim, gamma=16.0)
    assert paper.topk(x, 1)[0].max() < 1e-10  # the vanishing start the default avoids
    head = build_head("rbf", num_labels, dim)
    assert head.topk(x, 1)[0].min() > 1.0
    assert fit_top1(head, x, y, steps=60, lr=0.05) > 0.95
