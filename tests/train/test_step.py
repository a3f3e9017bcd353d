"""`xlc.train.step.Step` on 1 and 2 gloo ranks: the sparse-gradient input table against the dense one.

Reference: with the same weights and per-rank batches, the all-reduced gradient of the table is the same
whether autograd produces it dense or as touched rows (DeepSpeed then reduces it by an all-gather); after
a step, SparseAdam has moved exactly the touched rows.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers import assert_close
from xlc import config as xconfig
from xlc.bench.train import synthetic_batch
from xlc.data.schema import DatasetMeta
from xlc.train import engine as xengine
from xlc.train.model import build_model
from xlc.train.step import Step, sparse_tables

META = DatasetMeta(name="t", num_labels=30, multi_label=False, num_features=500)


def _step(sparse: bool, world: int) -> Step:
    cfg = xconfig.from_dict({"name": "t", "data": "unused", "head": {"name": "softmax"},
                             "backbone": {"hidden": [16], "dropout": 0.0, "options": {"sparse_grad": sparse}}})
    torch.manual_seed(0)
    model, head = build_model(cfg, META)
    ds_config = xengine.deepspeed_config(None, batch_size=8, lr=1e-2, weight_decay=0.0, clip_grad_norm=1.0)
    return Step(model, head, ds_config, lr=1e-2, head_lr=1e-2, weight_decay=0.0, world=world)


def _check_sparse_table_matches_dense(rank: int, world: int) -> None:
    os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE=str(world))
    xengine.select_accelerator(use_gpu=False)
    batch = synthetic_batch(torch.Generator().manual_seed(rank), 8, 6, META.num_features, META.num_labels)
    grads = {}
    for sparse in (True, False):
        step = _step(sparse, world)
        loss = step.head.loss(step.engine(batch), batch.targets)
        step.engine.backward(loss)
        step.engine.allreduce_gradients()
        grad = step.engine.module.backbone.embed.weight.grad
        assert grad.is_sparse == sparse
        grads[sparse] = grad.coalesce().to_dense() if sparse else grad.clone()
    assert_close(grads[True], grads[False], atol=1e-6, rtol=1e-5)

    step = _step(True, world)
    (table,) = sparse_tables(step.engine.module)
    before = table.detach().clone()
    step.step(batch)
    moved = (table.detach() != before).any(1)
    assert moved.equal(grads[True].abs().sum(1) > 0)  # exactly the rows some rank's batch touched


@pytest.mark.parametrize("world", [1, 2])
def test_sparse_table_gradient_and_update(world, spawn_gloo):
    spawn_gloo(world, _check_sparse_table_matches_dense)
