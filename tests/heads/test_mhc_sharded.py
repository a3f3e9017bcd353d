"""`mhc_sharded` on 1, 2 and 3 gloo ranks against the single-process `mhc` head on the concatenated batch.

Reference: `MHCHead` with the same weights (its table's rows [label_start, label_end) copied into each
shard) run on the global batch: loss, dX (each rank's rows), dE (each rank's rows), dW_g, db_g, dW_p,
db_p (whole, on every rank) and top-k must match. `mhc` itself is checked against float64 formulas in
tests/heads/test_mhc.py. Every rank's inputs are slices of one seeded global problem.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist

from tests.helpers import assert_close
from xlc.errors import ConfigError
from xlc.heads import HEADS, build_head
from xlc.heads._dist import local_rows
from xlc.heads._init import init_shard
from xlc.heads.mhc import MHCHead
from xlc.heads.mhc_sharded import MHCShardedHead
from xlc.heads.sharded import LabelShard

ROWS = {1: [6], 2: [5, 2], 3: [3, 0, 4]}  # unequal local batches, one of them empty
C, D, PER, HIDDEN, K = 23, 6, 4, 5, 2  # 6 groups of 4, the last ragged (20, 21, 22 + pad)
TOL = {torch.float32: 1e-5, torch.float64: 1e-9}
REPLICATED = ("group_head.weight", "group_head.bias", "proj.weight", "proj.bias")


def _problem(n: int, dtype: torch.dtype):
    """Global features, single-label targets (one unlabelled row) and padded multi-label targets: a row
    with more true groups than K (inserted labels), a duplicate label, a row without labels."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, D, generator=gen, dtype=torch.float64).to(dtype)  # [N, d]
    single = torch.randint(0, C, (n,), generator=gen)  # [N]
    single[1] = -1
    multi = torch.randint(0, C, (n, 4), generator=gen)  # [N, 4]
    multi[::2, 3] = -1
    multi[0] = torch.tensor([0, 9, 14, 22])  # groups 0, 2, 3, 5 > K = 2
    multi[1] = -1
    multi[-1, 1] = multi[-1, 0]
    return x, single, multi


def _reference(multi_label: bool, dtype: torch.dtype) -> MHCHead:
    torch.manual_seed(3)
    return MHCHead(C, D, group_size=PER, hidden=HIDDEN, candidates=K, multi_label=multi_label).to(dtype)


def _sharded_copy(ref: MHCHead) -> MHCShardedHead:
    head = build_head(
        "mhc_sharded", C, D, group_size=PER, hidden=HIDDEN, candidates=K, multi_label=ref.multi_label
    ).to(ref.table.weight.dtype)
    with torch.no_grad():
        for name in REPLICATED:
            head.get_parameter(name).copy_(ref.get_parameter(name))
        head.table.copy_(ref.table.weight[head.label_start : head.label_end])
    return head


def _loss_and_grads(head, x, targets, table):
    x = x.clone().requires_grad_(True)
    params = [table] + [head.get_parameter(n) for n in REPLICATED]
    loss = head.loss(x, targets)
    return (loss, *torch.autograd.grad(loss, [x, *params]))


def _check_against_mhc(rank, world_size):
    rows = ROWS[world_size]
    mine = local_rows(rows, rank)
    for dtype in (torch.float32, torch.float64):
        tol = TOL[dtype]
        x, single, multi = _problem(sum(rows), dtype)
        for multi_label, targets in ((True, multi), (True, single), (False, single)):
            ref = _reference(multi_label, dtype)
            head = _sharded_copy(ref)
            start, end = head.label_start, head.label_end
            assert start % PER == 0 and (end % PER == 0 or end == C)  # whole groups
            want = _loss_and_grads(ref, x, targets, ref.table.weight)
            got = _loss_and_grads(head, x[mine], targets[mine], head.table)
            expected = (want[0], want[1][mine], want[2][start:end], *want[3:])
            names = ("loss", "dX", "dE", *(f"d {n}" for n in REPLICATED))
            for name, g, r in zip(names, got, expected):
                assert_close(g, r, atol=tol, rtol=tol, msg=f"{name} {dtype} multi_label={multi_label} {list(targets.shape)}")

    # top-k: same labels as mhc's (k = 12 needs more groups than K), scores equal
    x, _, _ = _problem(sum(rows), torch.float64)
    for multi_label in (True, False):
        ref = _reference(multi_label, torch.float64)
        head = _sharded_copy(ref)
        for k in (1, 5, 12):
            scores, labels = head.topk(x[mine], k)
            want_scores, want_labels = ref.topk(x, k)
            assert torch.equal(labels, want_labels[mine]), (multi_label, k)
            assert_close(scores, want_scores[mine], atol=1e-12, rtol=1e-12)


def _check_init_and_debug(rank, world_size):
    """Default init: replicated layers equal on every rank, the table independent of the world size."""
    head = MHCShardedHead(C, D, group_size=PER, hidden=HIDDEN, candidates=K, seed=5)
    replicated = torch.cat([head.get_parameter(n).detach().flatten() for n in REPLICATED])
    everyone = [torch.empty_like(replicated) for _ in range(world_size)]
    dist.all_gather(everyone, replicated)
    assert all(torch.equal(r, everyone[0]) for r in everyone)
    whole = init_shard(LabelShard(None, 0, 1, C, 0, C), HIDDEN, False, seed=5)[0].detach()  # [C, hidden]
    bound = math.sqrt(6 / (C + 1 + HIDDEN))
    assert_close(head.table.detach(), whole[head.label_start : head.label_end] * bound * math.sqrt(HIDDEN))
    assert head.table.abs().max() <= bound

    # XLC_DEBUG_DIST: ranks with diverged group heads pick different candidates -> ConfigError, not a wrong loss
    if world_size > 1:
        x, _, multi = _problem(sum(ROWS[world_size]), torch.float32)
        mine = local_rows(ROWS[world_size], rank)
        with torch.no_grad():
            head.group_head.bias[rank % head.num_groups] += 100.0 * (rank + 1)
        os.environ["XLC_DEBUG_DIST"] = "1"
        try:
            with pytest.raises(ConfigError, match="different candidate labels"):
                head.loss(x[mine], multi[mine])
        finally:
            del os.environ["XLC_DEBUG_DIST"]


def _check_mhc_sharded(rank, world_size):
    _check_against_mhc(rank, world_size)
    _check_init_and_debug(rank, world_size)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_matches_single_process_mhc(spawn_gloo, world_size):
    """Loss, dX, dE, replicated-layer gradients and top-k equal `mhc` on the concatenated batch (one spawn
    per world size: each process pays seconds of lazy torch imports)."""
    spawn_gloo(world_size, _check_mhc_sharded)


def test_registered_and_label_sharded():
    head = build_head("mhc_sharded", 1000, 8, num_groups=30, hidden=4)
    assert HEADS["mhc_sharded"] is MHCShardedHead
    assert head.label_sharded == ("table",) and (head.label_start, head.label_end) == (0, 1000)
    assert head.state_dict()["table"].shape == (1000, 4)  # no padding row: checkpoints reshard by label range


@pytest.mark.parametrize("option", [{"candidates": 0}, {"hidden": 0}, {"num_groups": 0}])
def test_bad_options_are_config_errors(option):
    with pytest.raises(ConfigError, match=next(iter(option))):
        build_head("mhc_sharded", C, D, **option)
