"""`sharded_bce` on 1, 2 and 3 gloo ranks against the single-process `bce` head and a float64 formula.

Reference (float64, plain): z = X W^T + b over the concatenated global batch, y = the dense multi-hot
(single-label: one-hot; a repeated label counts once; an all -1 row is all negatives);
loss = mean_i sum_j BCEWithLogits(z_ij, y_ij) (`label_reduction="mean"`: each row divided by C).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_close
from tests.heads.test_sharded_softmax import CHUNK, ROWS, TOL, C, D, _loss_and_grads, _problem
from xlc.heads import build_head
from xlc.heads._dist import local_rows, shard_range
from xlc.heads.bce import BCEHead
from xlc.heads.sharded import ShardedBCEHead


def _reference_loss(z: torch.Tensor, targets: torch.Tensor, label_reduction: str) -> torch.Tensor:
    y = torch.zeros_like(z)  # [N, C]
    for i, row in enumerate(targets.view(len(targets), -1).tolist()):
        for label in row:
            if label >= 0:
                y[i, label] = 1.0
    per_row = F.binary_cross_entropy_with_logits(z, y, reduction="none").sum(1)  # [N]
    return (per_row / (z.shape[1] if label_reduction == "mean" else 1)).mean()


def _check_sharded_bce(rank, world_size):
    rows = ROWS[world_size]
    mine = local_rows(rows, rank)
    for dtype in (torch.float32, torch.float64):
        tol = TOL[dtype]
        x, w, b, single, multi = _problem(C, sum(rows), dtype)
        for targets in (single, multi):
            for reduction in ("sum", "mean"):
                ref = BCEHead(C, D, label_reduction=reduction).to(dtype)
                ref.load_state_dict({"weight": w, "bias": b})
                want = _loss_and_grads(ref, x, targets)
                if dtype == torch.float64:
                    assert_close(want[0], _reference_loss(x @ w.T + b, targets, reduction), atol=1e-12, rtol=1e-12)

                head = build_head("sharded_bce", C, D, chunk=CHUNK, label_reduction=reduction).to(dtype)
                start, end = head.label_start, head.label_end
                assert (start, end) == shard_range(C, rank, world_size)
                head.load_state_dict({"weight": w[start:end], "bias": b[start:end]})
                got = _loss_and_grads(head, x[mine], targets[mine])
                expected = (want[0], want[1][mine], want[2][start:end], want[3][start:end])
                for name, g, r in zip(("loss", "dX", "dW", "db"), got, expected):
                    assert_close(g, r, atol=tol, rtol=tol, msg=f"{name} {dtype} {reduction} {list(targets.shape)}")

    # top-k over all shards equals torch.topk of the full logits (k=5 exceeds a 3/4-label shard)
    for k in (1, 5):
        scores, labels = head.topk(x[mine], k)
        want_scores, want_labels = (x @ w.T + b).topk(k, dim=1)
        assert torch.equal(labels, want_labels[mine])
        assert_close(scores, want_scores[mine], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_matches_single_process_bce(spawn_gloo, world_size):
    """Loss (same on every rank), dX (own rows), dW/db (own shard) and top-k equal the `bce` head."""
    spawn_gloo(world_size, _check_sharded_bce)


def test_without_process_group_is_the_bce_head():
    """No torch.distributed: one shard holding every label, state_dict-compatible with `bce`, same bias init."""
    x, _, _, single, multi = _problem(C, 5, torch.float64)
    plain = BCEHead(C, D, chunk=CHUNK).double()
    head = ShardedBCEHead(C, D, chunk=CHUNK).double()
    assert torch.equal(head.bias, plain.bias) and head.bias[0].item() == pytest.approx(-math.log(C))
    head.load_state_dict(plain.state_dict())
    assert (head.label_start, head.label_end) == (0, C) and head.label_sharded == ("weight", "bias")
    for targets in (single, multi):
        assert_close(head.loss(x, targets), plain.loss(x, targets), atol=1e-12, rtol=1e-12)
    assert torch.equal(head.topk(x, 3)[1], plain.topk(x, 3)[1])
