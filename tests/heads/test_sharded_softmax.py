"""`sharded_softmax` on 1, 2 and 3 gloo ranks against the single-process `softmax` head and float64 formulas.

Reference (float64, plain): z = X W^T + b over the concatenated global batch; per row
`sum_{k in S} -log softmax(z)_k / |S|` (PAL mean; single-label: |S| = 1, plain CE; a row with no label
gives 0), loss = mean over all N rows. Sampled mode: the same formula over the columns U = the union
of the labels every rank kept. Every rank's inputs are slices of one seeded global problem.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.distributed as dist

from tests.helpers import assert_close
from xlc.errors import ConfigError, DataError
from xlc.heads import build_head
from xlc.heads._dist import local_rows, shard_range
from xlc.heads._init import init_shard
from xlc.heads.sharded import LabelShard, ShardedSoftmaxHead
from xlc.heads.softmax import ChunkedSoftmaxHead, SoftmaxHead

ROWS = {1: [6], 2: [5, 2], 3: [3, 0, 4]}  # unequal local batches, one of them empty
C, D, CHUNK = 11, 4, 3  # 11 labels: shards of 6/5 and 4/4/3, chunks that do not divide them
TOL = {torch.float32: 1e-5, torch.float64: 1e-9}


def _problem(num_labels: int, n: int, dtype: torch.dtype, seed: int = 0):
    """Global features, weight, bias, single-label and padded multi-label targets (a row without labels,
    a repeated label)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=gen, dtype=torch.float64)  # [N, d]
    w = torch.randn(num_labels, D, generator=gen, dtype=torch.float64)  # [C, d]
    b = torch.randn(num_labels, generator=gen, dtype=torch.float64)  # [C]
    single = torch.randint(0, num_labels, (n,), generator=gen)  # [N]
    multi = torch.randint(0, num_labels, (n, 3), generator=gen)  # [N, 3]
    multi[::2, 2] = -1
    multi[0] = -1
    multi[-1, 1] = multi[-1, 0]
    return x.to(dtype), w.to(dtype), b.to(dtype), single, multi


def _reference_loss(z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Plain PAL-mean / CE: -(y / |S|) . log_softmax(z), with y the dense multi-hot."""
    y = torch.zeros_like(z)  # [N, C]
    for i, row in enumerate(targets.view(len(targets), -1).tolist()):
        for label in row:
            if label >= 0:
                y[i, label] = 1.0
    y = y / y.sum(1, keepdim=True).clamp(min=1)
    return -(y * z.log_softmax(1)).sum(1).mean()


def _sharded(num_labels, w, b, **options) -> ShardedSoftmaxHead:
    head = build_head("sharded_softmax", num_labels, D, chunk=CHUNK, **options).to(w.dtype)
    with torch.no_grad():
        head.weight.copy_(w[head.label_start : head.label_end])
        head.bias.copy_(b[head.label_start : head.label_end])
    return head


def _loss_and_grads(head, x_local, targets_local):
    x = x_local.clone().requires_grad_(True)
    loss = head.loss(x, targets_local)
    return (loss, *torch.autograd.grad(loss, [x, head.weight, head.bias]))


def _check_exact(rank, world_size):
    rows = ROWS[world_size]
    mine = local_rows(rows, rank)
    for dtype in (torch.float32, torch.float64):
        tol = TOL[dtype]
        x, w, b, single, multi = _problem(C, sum(rows), dtype)
        for targets, mode in ((single, "pal_mean"), (multi, "pal_mean"), (multi, "pal_sum")):
            ref = SoftmaxHead(C, D, multi_label_loss=mode).to(dtype)
            ref.load_state_dict({"weight": w, "bias": b})
            want = _loss_and_grads(ref, x, targets)
            head = _sharded(C, w, b, multi_label_loss=mode)
            assert (head.label_start, head.label_end) == shard_range(C, rank, world_size)
            got = _loss_and_grads(head, x[mine], targets[mine])
            start, end = head.label_start, head.label_end
            expected = (want[0], want[1][mine], want[2][start:end], want[3][start:end])
            for name, g, r in zip(("loss", "dX", "dW", "db"), got, expected):
                assert_close(g, r, atol=tol, rtol=tol, msg=f"{name} {dtype} {mode} targets {list(targets.shape)}")

    # top-k over all shards equals torch.topk of the full logits; k=5 exceeds a 3/4-label shard
    x, w, b, _, _ = _problem(C, sum(rows), torch.float64)
    head = _sharded(C, w, b)
    for k in (1, 5, C):
        scores, labels = head.topk(x[mine], k)
        want_scores, want_labels = (x @ w.T + b).topk(k, dim=1)
        assert torch.equal(labels, want_labels[mine])
        assert_close(scores, want_scores[mine], atol=1e-12, rtol=1e-12)

    # two labels: at world size 3 the last rank owns none; both labels are positives in the batch, so
    # sampled mode keeps them all and must equal the exact softmax too
    x2, w2, b2, single2, multi2 = _problem(2, sum(rows), torch.float64, seed=2)
    for rate in (1.0, 0.5):
        tiny = _sharded(2, w2, b2, sample_rate=rate)
        for targets in (single2, multi2):
            loss, gx, _, _ = _loss_and_grads(tiny, x2[mine], targets[mine])
            xr = x2.clone().requires_grad_(True)
            want = _reference_loss(xr @ w2.T + b2, targets)
            assert_close(loss, want, atol=1e-9, rtol=1e-9)
            assert_close(gx, torch.autograd.grad(want, [xr])[0][mine], atol=1e-9, rtol=1e-9)
    assert torch.equal(tiny.topk(x2[mine], 2)[1], (x2 @ w2.T + b2).topk(2, dim=1)[1][mine])

    # a bad label on one rank raises on every rank (validated after the gather), naming the global row
    bad = single[mine].clone()
    if rank == world_size - 1 and len(bad):
        bad[-1] = C
    with pytest.raises(DataError, match=f"targets row {sum(rows) - 1}"):
        head.loss(x[mine], bad)


def _check_sampled(rank, world_size):
    num_labels, rate = 40, 0.3
    rows = ROWS[world_size]
    mine = local_rows(rows, rank)
    x, w, b, single, multi = _problem(num_labels, sum(rows), torch.float64, seed=1)
    for targets in (single, multi):
        head = _sharded(num_labels, w, b, sample_rate=rate, seed=7)
        start, end = head.label_start, head.label_end
        loss, gx, gw, gb = _loss_and_grads(head, x[mine], targets[mine])
        kept = head.sampled_labels

        # every positive of the global batch in this range is kept, plus negatives up to ceil(rate * C_local)
        positives = targets[(targets >= start) & (targets < end)].unique()
        assert set(positives.tolist()) <= set(kept.tolist())
        assert len(kept) == max(math.ceil(rate * (end - start)), len(positives))
        assert bool((kept[1:] > kept[:-1]).all()) and start <= int(kept[0]) and int(kept[-1]) < end

        # the loss is the softmax over exactly the union U of kept labels
        everyone = [None] * world_size
        dist.all_gather_object(everyone, kept.tolist())
        union = torch.tensor(sum(everyone, []))  # [|U|] ascending: ranks hold ascending ranges
        xr, wr, br = (t.clone().requires_grad_(True) for t in (x, w, b))
        remapped = torch.where(targets >= 0, torch.searchsorted(union, targets.clamp(min=0)), -1)
        want = _reference_loss(xr @ wr[union].T + br[union], remapped)
        want_gx, want_gw, want_gb = torch.autograd.grad(want, [xr, wr, br])
        assert_close(loss, want, atol=1e-9, rtol=1e-9)
        assert_close(gx, want_gx[mine], atol=1e-9, rtol=1e-9)
        assert_close(gw, want_gw[start:end], atol=1e-9, rtol=1e-9)  # zero rows for labels not kept
        assert_close(gb, want_gb[start:end], atol=1e-9, rtol=1e-9)

        # seeded: a new head with the same seed keeps the same labels; eval mode is the exact softmax
        again = _sharded(num_labels, w, b, sample_rate=rate, seed=7)
        again.loss(x[mine], targets[mine])
        assert torch.equal(again.sampled_labels, kept)
        again.eval()
        assert_close(again.loss(x[mine], targets[mine]), _reference_loss(x @ w.T + b, targets), atol=1e-9, rtol=1e-9)


def _check_sharded_softmax(rank, world_size):
    _check_exact(rank, world_size)
    _check_sampled(rank, world_size)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_matches_single_process_exact_and_sampled(spawn_gloo, world_size):
    """Exact mode: loss, dX (own rows), dW/db (own shard) and top-k equal the `softmax` head on the global
    batch. Sampled mode keeps every positive and equals the float64 softmax over the kept labels.
    (One spawn per world size: each process pays seconds of lazy torch imports.)"""
    spawn_gloo(world_size, _check_sharded_softmax)


def test_without_process_group_is_the_chunked_softmax():
    """No torch.distributed: one shard holding every label, state_dict-compatible with `chunked_softmax`."""
    x, _, _, single, multi = _problem(C, 5, torch.float64)
    plain = ChunkedSoftmaxHead(C, D, chunk=CHUNK).double()
    head = ShardedSoftmaxHead(C, D, chunk=CHUNK).double()
    head.load_state_dict(plain.state_dict())
    assert (head.label_start, head.label_end) == (0, C) and head.label_sharded == ("weight", "bias")
    for targets in (single, multi):
        assert_close(head.loss(x, targets), plain.loss(x, targets), atol=1e-12, rtol=1e-12)
    assert torch.equal(head.topk(x, 3)[1], plain.topk(x, 3)[1])
    assert copy.deepcopy(head).shard is head.shard


def test_initial_weights_do_not_depend_on_world_size():
    def full(world):
        shards = [LabelShard(None, r, world, 9000, *shard_range(9000, r, world)) for r in range(world)]
        return torch.cat([init_shard(s, 3, True, seed=4)[0].detach() for s in shards])

    one = full(1)
    assert torch.equal(full(2), one) and torch.equal(full(3), one)
    assert one.abs().max() <= 1 / math.sqrt(3) and not torch.equal(one[:4096], one[4096:8192])


@pytest.mark.parametrize("rate", [0.0, -0.5, 1.5])
def test_bad_sample_rate_names_the_option(rate):
    with pytest.raises(ConfigError, match="head.sample_rate"):
        build_head("sharded_softmax", C, D, sample_rate=rate)
