"""Chunked CE / PAL / BCE and top-k against plain float64 references over the full logits.

References (z = x W^T + b, S = the row's distinct labels):
    CE   = logsumexp(z) - z_y
    PAL  = sum_{k in S} (logsumexp(z) - z_k), divided by |S| for pal_mean; 0 for an empty row
    BCE  = sum_j softplus(z_j) - sum_{k in S} z_k   (= sum_j BCEWithLogits(z_j, y_j)), / C for "mean"
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from tests.helpers import assert_close
from xlc.errors import ConfigError
from xlc.heads._chunked import (
    chunked_bce,
    chunked_cross_entropy,
    chunked_topk,
    default_chunk,
    topk_lowest_index,
    update_running_topk,
)

B, C, D = 5, 11, 4


def _inputs(seed=0, batch=B, labels=C, dim=D, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    w = torch.randn(labels, dim, generator=g, dtype=torch.float64)
    b = torch.randn(labels, generator=g, dtype=torch.float64) if bias else None
    return x, w, b


MULTI = torch.tensor([[0, 3, -1], [5, 5, 2], [-1, -1, -1], [10, 0, 7], [4, -1, -1]])
SINGLE = torch.tensor([0, 3, 10, 7, 4])


def _multi_hot(targets, labels):
    y = torch.zeros(targets.shape[0], labels, dtype=torch.float64)
    rows, cols = (targets >= 0).nonzero(as_tuple=True)
    y[rows, targets[rows, cols]] = 1.0
    return y  # [B, C]; duplicates collapse to one


def ref_ce(x, w, b, targets, reduction="pal_mean"):
    z = x @ w.T + (0 if b is None else b)
    logp = torch.log_softmax(z, dim=1)
    y = _multi_hot(targets.view(len(targets), -1), w.shape[0])
    n = y.sum(1)
    per = -(y * logp).sum(1)
    return per if reduction == "pal_sum" else torch.where(n > 0, per / n.clamp(min=1), 0.0)


def ref_bce(x, w, b, targets, label_reduction="sum"):
    z = x @ w.T + (0 if b is None else b)
    y = _multi_hot(targets.view(len(targets), -1), w.shape[0])
    per = F.binary_cross_entropy_with_logits(z, y, reduction="none").sum(1)
    return per / w.shape[0] if label_reduction == "mean" else per


def _grads(fn, x, w, b):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    b = None if b is None else b.clone().requires_grad_()
    out = fn(x, w, b)
    (out * torch.arange(1, len(out) + 1, dtype=out.dtype)).sum().backward()  # distinct row weights
    return out.detach(), x.grad, w.grad, None if b is None else b.grad


CASES = [
    ("ce", SINGLE, "pal_mean"),
    ("ce", MULTI, "pal_mean"),
    ("ce", MULTI, "pal_sum"),
    ("bce", SINGLE, "sum"),
    ("bce", MULTI, "sum"),
    ("bce", MULTI, "mean"),
]


def _pair(kind, targets, red, chunk, offset=0):
    if kind == "ce":
        return (
            lambda x, w, b: chunked_cross_entropy(x, w, b, targets, chunk=chunk, label_offset=offset, reduction=red),
            lambda x, w, b: ref_ce(x, w, b, targets, red),
        )
    return (
        lambda x, w, b: chunked_bce(x, w, b, targets, chunk=chunk, label_offset=offset, label_reduction=red),
        lambda x, w, b: ref_bce(x, w, b, targets, red),
    )


@pytest.mark.parametrize("kind,targets,red", CASES)
@pytest.mark.parametrize("chunk", [1, 3, 4, C, C + 5])
@pytest.mark.parametrize("bias", [True, False])
def test_loss_and_grads_match_full_reference(kind, targets, red, chunk, bias):
    x, w, b = _inputs(bias=bias)
    fn, ref = _pair(kind, targets, red, chunk)
    for got, want in zip(_grads(fn, x, w, b), _grads(ref, x, w, b)):
        if want is not None:
            assert_close(got, want)


@pytest.mark.parametrize("kind,targets,red", CASES)
def test_gradcheck(kind, targets, red):
    x, w, b = _inputs(batch=5, labels=C, dim=3)
    fn, _ = _pair(kind, targets, red, chunk=4)
    args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_())
    assert torch.autograd.gradcheck(fn, args)


def test_pal_equals_cross_entropy_with_multi_hot_and_normalised_targets():
    x, w, b = _inputs()
    z = x @ w.T + b
    y = _multi_hot(MULTI, C)
    rows = y.sum(1) > 0
    pal_sum = chunked_cross_entropy(x, w, b, MULTI, chunk=3, reduction="pal_sum")
    pal_mean = chunked_cross_entropy(x, w, b, MULTI, chunk=3, reduction="pal_mean")
    assert_close(pal_sum, F.cross_entropy(z, y, reduction="none"))
    normalised = y[rows] / y[rows].sum(1, keepdim=True)
    assert_close(pal_mean[rows], F.cross_entropy(z[rows], normalised, reduction="none"))
    assert (pal_mean[~rows] == 0).all() and (pal_sum[~rows] == 0).all()


def test_empty_row_has_zero_gradient():
    x, w, b = _inputs()
    x.requires_grad_()
    chunked_cross_entropy(x, w, b, MULTI, chunk=3).sum().backward()
    assert (x.grad[2] == 0).all() and (x.grad[0] != 0).any()


@pytest.mark.parametrize("kind,targets,red", CASES)
def test_label_offset_scores_only_the_shard(kind, targets, red):
    """A shard [lo, hi) with label_offset=lo equals the reference over those labels, own targets only."""
    x, w, b = _inputs()
    lo, hi = 4, 9
    fn = _pair(kind, targets, red, chunk=2, offset=lo)[0]
    got = fn(x, w[lo:hi], b[lo:hi])
    z = x @ w[lo:hi].T + b[lo:hi]  # [B, hi - lo]
    y = _multi_hot(targets.view(B, -1), C)[:, lo:hi]
    if kind == "ce":
        n = _multi_hot(targets.view(B, -1), C).sum(1)  # |S| counts all labels, not only the shard's
        a, c = (n, 1.0) if red == "pal_sum" else ((n > 0).double(), torch.where(n > 0, 1 / n.clamp(min=1), 0.0))
        want = a * torch.logsumexp(z, 1) - c * (y * z).sum(1)
    else:
        want = (F.softplus(z).sum(1) - (y * z).sum(1)) / (hi - lo if red == "mean" else 1)
    assert_close(got, want)


def test_bfloat16_inputs_accumulate_in_float32():
    x, w, b = (t.float() for t in _inputs(batch=8, labels=300, dim=16))
    targets = torch.arange(8) * 37
    xb = x.bfloat16().requires_grad_()
    loss = chunked_cross_entropy(xb, w, b, targets, chunk=64)
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert xb.grad.dtype == torch.bfloat16
    assert_close(loss, ref_ce(x.bfloat16().double(), w.bfloat16().double(), b.bfloat16().double(), targets), atol=0.05, rtol=0.02)


def test_topk_matches_full_logits():
    x, w, b = _inputs(batch=7, labels=50, dim=6)
    z = x @ w.T + b
    want_s, want_i = torch.topk(z, 5, dim=1)
    for chunk in (1, 3, 7, 50, 64):
        s, i = chunked_topk(x, w, b, 5, chunk=chunk)
        assert torch.equal(i, want_i)
        assert_close(s, want_s)
    s, i = chunked_topk(x, w[10:], b[10:], 5, chunk=7, label_offset=10)
    ws, wi = torch.topk(z[:, 10:], 5, dim=1)
    assert torch.equal(i, wi + 10)


def test_topk_ties_go_to_the_lower_label():
    x = torch.ones(2, 3, dtype=torch.float64)
    w = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0]], dtype=torch.float64)
    # logits per row: [0, 1, 0, 1, 0, 1] -> top-4 by (score desc, label asc) = 1, 3, 5, 0
    for chunk in (1, 2, 4, 6):
        s, i = chunked_topk(x, w, None, 4, chunk=chunk)
        assert i.tolist() == [[1, 3, 5, 0]] * 2
        assert s.tolist() == [[1.0, 1.0, 1.0, 0.0]] * 2
    assert topk_lowest_index(torch.zeros(1, 9), 3)[1].tolist() == [[0, 1, 2]]
    s, i = update_running_topk(
        torch.tensor([[2.0, 1.0]]), torch.tensor([[7, 8]]), torch.tensor([[2.0, 1.0]]), torch.tensor([[3, 9]]), 3
    )
    assert i.tolist() == [[3, 7, 8]]


def test_errors_name_the_field():
    x, w, b = _inputs()
    with pytest.raises(ConfigError, match="multi_label_loss='avg'"):
        chunked_cross_entropy(x, w, b, SINGLE, reduction="avg")
    with pytest.raises(ConfigError, match="label_reduction"):
        chunked_bce(x, w, b, SINGLE, label_reduction="max")
    with pytest.raises(ConfigError, match="k=12"):
        chunked_topk(x, w, b, 12)


def test_default_chunk_bounds_the_logit_block():
    assert default_chunk(256, 10**6) == 16384  # 256 x 16384 x 4 bytes = 16 MiB
    assert default_chunk(256, 10**6, "cuda") == 131072  # 128 MiB
    assert default_chunk(256, 1000) == 1000
    assert default_chunk(10**9, 10**6) == 1


GROUP_TARGETS = torch.tensor([[0, 12, -1], [5, 5, 6], [-1, -1, -1], [7, 0, 1], [12, -1, -1], [3, 9, 11]])
GROUP_CASES = [
    ("ce", GROUP_TARGETS, "pal_mean"),
    ("ce", GROUP_TARGETS, "pal_sum"),
    ("ce", GROUP_TARGETS[:, 0].clamp(min=0), "pal_mean"),
    ("bce", GROUP_TARGETS, "mean"),
    ("bce", GROUP_TARGETS, "sum"),
]


def _check_group(rank, world_size):
    """Each rank owns a contiguous label range and scores the full batch; results equal one process."""
    x, w, b = _inputs(seed=3, batch=6, labels=13, dim=5)
    bounds = [13 * r // world_size for r in range(world_size + 1)]
    lo, hi = bounds[rank], bounds[rank + 1]
    for kind, targets, red in GROUP_CASES:
        fn = chunked_cross_entropy if kind == "ce" else chunked_bce
        opt = {"reduction": red} if kind == "ce" else {"label_reduction": red}
        full = _grads(lambda x, w, b: fn(x, w, b, targets, chunk=3, **opt), x, w, b)
        local = _grads(
            lambda x_, w_, b_: fn(x_, w_, b_, targets, chunk=2, label_offset=lo, group=dist.group.WORLD, **opt),
            x,
            w[lo:hi],
            b[lo:hi],
        )
        case = f"{kind} {red} rank {rank}/{world_size}"
        assert_close(local[0], full[0], msg=f"loss, {case}")
        dist.all_reduce(local[1])  # the caller's autograd gather sums the ranks' dX
        assert_close(local[1], full[1], msg=f"dX, {case}")
        assert_close(local[2], full[2][lo:hi], msg=f"dW, {case}")
        assert_close(local[3], full[3][lo:hi], msg=f"db, {case}")


@pytest.mark.parametrize("world_size", [2, 3])
def test_group_path_equals_single_process(spawn_gloo, world_size):
    spawn_gloo(world_size, _check_group)


def test_gathered_dot_matches_the_gather_in_float64_with_repeated_indices():
    """z[p] = table[index[p]] . x[rows[p]]; gradcheck covers the index_add backward (repeats accumulate)."""
    from xlc.heads._chunked import _GatheredDot

    g = torch.Generator().manual_seed(0)
    table = torch.randn(9, 4, dtype=torch.float64, generator=g, requires_grad=True)
    x = torch.randn(3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    index, rows = torch.tensor([0, 8, 8, 2, 0, 5, 5]), torch.tensor([0, 0, 1, 1, 2, 2, 2])
    for chunk in (1, 3, 100):
        z = _GatheredDot.apply(table, x, index, rows, chunk)
        assert_close(z, (table[index] * x[rows]).sum(1))
        assert torch.autograd.gradcheck(lambda t, y: _GatheredDot.apply(t, y, index, rows, chunk), (table, x))


needs_compiler = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")), reason="torch.compile on the CPU needs a C++ compiler"
)


@needs_compiler
@pytest.mark.slow  # torch.compile on the CPU: ~30 s cold for the first case
@pytest.mark.parametrize("kind,targets,red", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_fused_passes_match_full_reference(monkeypatch, kind, targets, red, bias):
    """The compiled per-chunk passes (`xlc.heads._fused`, on by default on CUDA), forced on the CPU."""
    x, w, b = _inputs(bias=bias)
    for chunk in (4, C + 5, 3):
        monkeypatch.setenv("XLC_FUSED_CHUNKS", "1")
        fn, ref = _pair(kind, targets, red, chunk)
        for got, want in zip(_grads(fn, x, w, b), _grads(ref, x, w, b)):
            if want is not None:
                assert_close(got, want)
    shard, _ = _pair(kind, targets, red, chunk=4, offset=2)  # labels [2, 2 + C) of a sharded head
    fused = _grads(shard, x, w, b)
    monkeypatch.setenv("XLC_FUSED_CHUNKS", "0")
    for got, want in zip(fused, _grads(shard, x, w, b)):
        if want is not None:
            assert_close(got, want)


@needs_compiler
@pytest.mark.slow  # torch.compile on the CPU
def test_fused_bfloat16_matches_the_eager_path(monkeypatch):
    x, w, b = (t.float() for t in _inputs(batch=8, labels=300, dim=16))
    targets = torch.arange(8) * 37
    runs = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("XLC_FUSED_CHUNKS", mode)
        runs[mode] = _grads(lambda x, w, b: chunked_cross_entropy(x.bfloat16(), w, b, targets, chunk=64), x, w, b)
    for fused, eager in zip(runs["1"], runs["0"]):
        assert fused.dtype == eager.dtype
        assert_close(fused, eager, atol=2e-3, rtol=1e-2)


def test_fused_switch(monkeypatch):
    from xlc.heads import _fused

    cpu = torch.zeros(1)
    assert not _fused.enabled(cpu, linear=True)  # auto: CUDA only
    monkeypatch.setenv("XLC_FUSED_CHUNKS", "1")
    assert _fused.enabled(cpu, linear=True) and not _fused.enabled(cpu, linear=False)
    monkeypatch.setenv("XLC_FUSED_CHUNKS", "yes")
    with pytest.raises(ValueError, match="XLC_FUSED_CHUNKS='yes'"):
        _fused.enabled(cpu, linear=True)
