"""Margin softmax (`margin: arcface | cosface`) on `sharded_softmax` and `mhs` against a float64 reference, and
`sharded_softmax` with a margin on 1, 2 and 3 gloo ranks against the same reference on the global batch.

Reference (float64, plain, every logit materialised; the angle through arccos, unlike the implementation's
sqrt form): cos = normalise(X) normalise(W)^T [N, C]; the target logit becomes s psi(cos_y), with
ArcFace psi = cos(arccos(cos_y) + m) while arccos(cos_y) + m <= pi, else cos_y - m sin m, and CosFace
psi = cos_y - m; every other logit stays s cos_j; loss = mean_i CE(row i) (a row with label -1 gives 0).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_close
from xlc.errors import ConfigError
from xlc.heads import build_head
from xlc.heads._dist import local_rows

C, D = 13, 5
ROWS = {1: [7], 2: [4, 3], 3: [3, 0, 4]}  # unequal local batches, one empty
CASES = [("arcface", 0.5, 64.0), ("arcface", 0.3, 8.0), ("cosface", 0.35, 30.0)]


def reference_loss(x, w, targets, kind, m, s):
    cos = F.normalize(x, dim=1) @ F.normalize(w, dim=1).T  # [N, C]
    rows = torch.nonzero(targets >= 0).flatten()
    cos_y = cos[rows, targets[rows]]
    if kind == "arcface":
        theta = torch.arccos(cos_y.clamp(-1 + 1e-15, 1 - 1e-15))
        psi = torch.where(theta + m <= math.pi, torch.cos(theta + m), cos_y - m * math.sin(m))
    else:
        psi = cos_y - m
    z = (s * cos).index_put((rows, targets[rows]), s * psi)  # [N, C]
    per_row = torch.zeros(len(x), dtype=x.dtype).index_put((rows,), F.cross_entropy(z[rows], targets[rows],
                                                                                     reduction="none"))
    return per_row.mean()


def problem(n, seed=0):
    """Features, weights, targets with a row without label, and a row pointing away from its class
    (angle near pi: ArcFace's continuation branch)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=gen, dtype=torch.float64)
    w = torch.randn(C, D, generator=gen, dtype=torch.float64)
    t = torch.randint(0, C, (n,), generator=gen)
    t[1] = -1
    x[2] = -3 * w[t[2]] + 0.01 * x[2]
    return x, w, t


def loss_and_grads(head, x, t, weight):
    x = x.clone().requires_grad_(True)
    loss = head.loss(x, t)
    return (loss, *torch.autograd.grad(loss, [x, weight]))


def reference_and_grads(x, w, t, kind, m, s):
    x, w = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    loss = reference_loss(x, w, t, kind, m, s)
    return (loss, *torch.autograd.grad(loss, [x, w]))


@pytest.mark.parametrize("kind, m, s", CASES)
@pytest.mark.parametrize("chunk", [1, 4, None])  # chunk 1: chunks holding only the target (excluded)
def test_sharded_softmax_margin_is_the_float64_reference(kind, m, s, chunk):
    x, w, t = problem(7)
    head = build_head("sharded_softmax", C, D, bias=False, chunk=chunk, margin=kind, margin_m=m,
                      margin_scale=s).double()
    with torch.no_grad():
        head.weight.copy_(w)
    got, want = loss_and_grads(head, x, t, head.weight), reference_and_grads(x, w, t, kind, m, s)
    for name, g, r in zip(("loss", "dX", "dW"), got, want):
        assert_close(g, r, atol=1e-10, rtol=1e-10, msg=name)
    scores, labels = head.topk(x, 4)
    cos = F.normalize(x, dim=1) @ F.normalize(w, dim=1).T
    assert torch.equal(labels, cos.topk(4, dim=1).indices)
    assert_close(scores, s * cos.topk(4, dim=1).values, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("kind, m, s", CASES)
def test_mhs_margin_is_the_float64_reference_over_the_sampled_union(kind, m, s):
    x, w, t = problem(6, seed=1)
    head = build_head("mhs", C, D, group_size=3, sampled_groups=1, bias=False, chunk=2, margin=kind, margin_m=m,
                      margin_scale=s).double()
    with torch.no_grad():
        head.weight.copy_(w)
    torch.manual_seed(5)
    groups = head.sample_groups(t)
    labels = (groups[:, None] * 3 + torch.arange(3)).flatten()
    labels = labels[labels < C]  # [|U|] the union's labels, ascending
    torch.manual_seed(5)
    got = loss_and_grads(head, x, t, head.weight)
    local = torch.where(t >= 0, torch.searchsorted(labels, t.clamp(min=0)), -1)
    loss, gx, gw_union = reference_and_grads(x, w[labels], local, kind, m, s)
    gw = torch.zeros_like(w).index_put((labels,), gw_union)
    for name, g, r in zip(("loss", "dX", "dW"), got, (loss, gx, gw)):
        assert_close(g, r, atol=1e-10, rtol=1e-10, msg=name)


def test_option_errors_name_the_option():
    with pytest.raises(ConfigError, match="head.margin='sphere': expected one of arcface, cosface, none"):
        build_head("mhs", C, D, group_size=3, bias=False, margin="sphere")
    with pytest.raises(ConfigError, match="head.margin='arcface' .* set head.bias: false"):
        build_head("sharded_softmax", C, D, margin="arcface")
    with pytest.raises(ConfigError, match="head.margin_m=4.0"):
        build_head("sharded_softmax", C, D, bias=False, margin="arcface", margin_m=4.0)
    head = build_head("sharded_softmax", C, D, bias=False, margin="cosface")
    with pytest.raises(ConfigError, match="needs single-label targets"):
        head.loss(torch.randn(2, D), torch.tensor([[1, 2], [3, -1]]))


def _check_sharded_margin(rank, world_size):
    rows = ROWS[world_size]
    mine = local_rows(rows, rank)
    x, w, t = problem(sum(rows), seed=2)
    for kind, m, s in CASES:
        head = build_head("sharded_softmax", C, D, bias=False, chunk=2, margin=kind, margin_m=m,
                          margin_scale=s).double()
        start, end = head.label_start, head.label_end
        with torch.no_grad():
            head.weight.copy_(w[start:end])
        got = loss_and_grads(head, x[mine], t[mine], head.weight)
        loss, gx, gw = reference_and_grads(x, w, t, kind, m, s)
        for name, g, r in zip(("loss", "dX", "dW"), got, (loss, gx[mine], gw[start:end])):
            assert_close(g, r, atol=1e-10, rtol=1e-10, msg=f"{name} {kind} rank {rank}/{world_size}")
        cos = F.normalize(x, dim=1) @ F.normalize(w, dim=1).T
        assert torch.equal(head.topk(x[mine], 3)[1], cos.topk(3, dim=1).indices[mine])


@pytest.mark.parametrize("world_size", [2, pytest.param(3, marks=pytest.mark.slow)])  # ~8 s a spawn when loaded
def test_sharded_margin_on_gloo_ranks_is_the_global_reference(spawn_gloo, world_size):
    """Each rank's loss, its rows' dX and its shard's dW equal the float64 reference on the global batch."""
    spawn_gloo(world_size, _check_sharded_margin)
