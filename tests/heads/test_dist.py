"""Collectives of `xlc.heads._dist` on 1, 2 and 3 gloo processes against the single-process answer."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from tests.helpers import assert_close
from xlc.errors import ConfigError
from xlc.heads._dist import (
    all_gather_rows,
    all_gather_targets,
    debug_check,
    global_logsumexp,
    local_rows,
    merge_topk_across_ranks,
    rank_and_world,
    resolve_group,
    shard_range,
    sum_grad_over_ranks,
    sum_over_ranks,
)

# rows per rank for each world size; a rank with an empty batch is included on purpose
ROWS = {1: [5], 2: [0, 4], 3: [3, 0, 5]}


@pytest.mark.parametrize("num_labels", [1, 2, 7, 10, 11, 1000])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_shard_range_tiles_and_balances(num_labels, world):
    ranges = [shard_range(num_labels, r, world) for r in range(world)]
    assert ranges[0][0] == 0 and ranges[-1][1] == num_labels
    assert all(ranges[r][1] == ranges[r + 1][0] for r in range(world - 1))
    sizes = [end - start for start, end in ranges]
    assert max(sizes) - min(sizes) <= 1 and sorted(sizes, reverse=True) == sizes


def test_shard_range_rejects_bad_rank():
    with pytest.raises(ConfigError, match="rank=3"):
        shard_range(10, 3, 3)


def test_world_of_one_without_process_group():
    assert rank_and_world() == (0, 1)
    x = torch.randn(4, 3, requires_grad=True)
    assert all_gather_rows(x) is x
    t = torch.tensor([[1, -1]])
    assert all_gather_targets(t) is t


def _check_collectives(rank, world_size):
    rows = ROWS[world_size]
    n, d, num_labels, k = sum(rows), 3, 11, 4
    gen = torch.Generator().manual_seed(0)
    x_full = torch.randn(n, d, generator=gen, dtype=torch.float64)  # [N, d]
    coef = torch.randn(world_size, n, d, generator=gen, dtype=torch.float64)  # each rank's loss coefficients
    mine = local_rows(rows, rank)

    # features: forward = concatenation; backward = sum over ranks of each rank's gradient of my rows
    x = x_full[mine].clone().requires_grad_(True)  # [B_r, d]
    gathered = all_gather_rows(x)  # [N, d]
    assert_close(gathered, x_full)
    (gathered * coef[rank]).sum().backward()
    assert_close(x.grad, coef.sum(0)[mine], atol=1e-12, rtol=1e-12)

    # single-label and multi-label targets (each rank a different width M_r = rank + 1)
    single = torch.arange(n)[mine]
    assert torch.equal(all_gather_targets(single), torch.arange(n))
    multi_full = torch.full((n, world_size), -1)
    for r in range(world_size):
        multi_full[local_rows(rows, r), : r + 1] = 7 * r + 1
    multi = multi_full[mine][:, : rank + 1]  # [B_r, M_r]
    assert torch.equal(all_gather_targets(multi), multi_full)

    # top-k merge with many ties (scores in {0, 1, 2}): equal scores go to the lower label on every rank;
    # local top-k over my label range (global ids), padded where the shard is small
    scores_full = torch.randint(0, 3, (n, num_labels), generator=gen).double()  # [N, C]
    start, end = shard_range(num_labels, rank, world_size)
    kk = min(k, end - start)
    local_scores, local_pos = scores_full[:, start:end].sort(dim=1, descending=True, stable=True)
    local_scores, local_pos = local_scores[:, :kk], local_pos[:, :kk]  # [N, kk]
    pad = k - kk
    local_scores = torch.cat([local_scores, torch.full((n, pad), float("-inf"))], 1)
    local_labels = torch.cat([local_pos + start, torch.full((n, pad), -1)], 1)
    top, labels = merge_topk_across_ranks(local_scores, local_labels, k)
    want_top, want_labels = scores_full.sort(dim=1, descending=True, stable=True)
    want_top, want_labels = want_top[:, :k], want_labels[:, :k]
    assert torch.equal(labels, want_labels) and torch.equal(top, want_top)
    everyone = [None] * world_size
    dist.all_gather_object(everyone, (top, labels))
    assert all(torch.equal(t, top) and torch.equal(lab, labels) for t, lab in everyone)
    _check_reductions(rank, world_size, gen, x_full, coef[0], mine)
    if world_size > 1:
        _check_debug_switch(rank, world_size)


def _check_reductions(rank, world_size, gen, x_full, coef, mine):
    """Each reduction's forward and backward; rank r contributes r + 1, so sums are W (W + 1) / 2."""
    group = resolve_group()[0]  # None on one process: the reductions skip communication
    total = world_size * (world_size + 1) / 2
    x = x_full[mine].clone().requires_grad_(True)  # [B_r, d]
    (all_gather_rows(x, replicated=True) * coef).sum().backward()  # the same loss on every rank
    assert_close(x.grad, coef[mine], atol=0, rtol=0)  # my slice, not summed over ranks
    share = torch.full((2,), rank + 1.0, dtype=torch.float64, requires_grad=True)
    summed = sum_over_ranks(share, group)
    summed.sum().backward()
    assert_close(summed, torch.full((2,), total))
    assert_close(share.grad, torch.ones(2))  # backward: identity
    ones = torch.ones(2, dtype=torch.float64, requires_grad=True)
    same = sum_grad_over_ranks(ones, group)
    (same * (rank + 1)).sum().backward()
    assert_close(same, torch.ones(2))  # forward: identity
    assert_close(ones.grad, torch.full((2,), total))
    z = torch.randn(3, world_size, generator=gen, dtype=torch.float64)  # [3, W], rank r holds column r
    assert_close(global_logsumexp(z[:, rank], torch.ones(3, dtype=torch.float64), group), z.logsumexp(1))


def _check_debug_switch(rank, world_size):
    os.environ["XLC_DEBUG_DIST"] = "1"
    rng = shard_range(10, rank, world_size)
    x, t = torch.zeros(2, 4), torch.zeros(2, dtype=torch.long)
    debug_check("loss", features=x, targets=t, label_range=rng, num_labels=10)  # consistent: passes

    bad = torch.zeros(2, 5 if rank == world_size - 1 else 4)  # last rank has the wrong feature dim
    with pytest.raises(ConfigError, match=r"feature dims differ(.|\n)*rank \| op \| features"):
        debug_check("loss", features=bad, targets=t, label_range=rng, num_labels=10)
    wrong_range = shard_range(10, world_size - 1 - rank, world_size)  # ranges in reverse rank order
    with pytest.raises(ConfigError, match=r"do not tile"):
        debug_check("loss", features=x, targets=t, label_range=wrong_range, num_labels=10)
    mixed = torch.zeros(2, 3, dtype=torch.long) if rank == 0 else t
    with pytest.raises(ConfigError, match=r"mix single-label"):
        debug_check("loss", features=x, targets=mixed, label_range=rng, num_labels=10)
    no_grad = x.requires_grad_(rank == 1)  # a rank that would skip the backward all-reduce
    with pytest.raises(ConfigError, match=r"grad differs"):
        debug_check("loss", features=no_grad, targets=t, label_range=rng, num_labels=10)
    os.environ["XLC_DEBUG_DIST"] = "0"
    debug_check("loss", features=bad)  # switch off: no collective, no error


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_collectives_equal_single_process_and_debug_switch_raises(spawn_gloo, world_size):
    """Gather, its backward, target padding and top-k merge equal the single-process answer; with
    XLC_DEBUG_DIST=1 a deliberate mismatch raises a per-rank table on every rank instead of hanging."""
    spawn_gloo(world_size, _check_collectives)
