"""The lr schedule shared by every optimiser, head clipping by the whole head's norm, and optimiser steps at
gradient-accumulation boundaries only.

Reference (xlc/train/schedule.py): m(n) = (n+1)/W for n < W, then 1, 1-p or (1+cos(pi p))/2 with
p = (n-W)/(T-W); clipping a sharded head on 2 ranks = `clip_grad_norm_` over the full head on one.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from tests.helpers import assert_close
from xlc import config as xconfig
from xlc.bench.train import synthetic_batch
from xlc.data.schema import DatasetMeta
from xlc.errors import ConfigError
from xlc.heads import build_head
from xlc.train import engine as xengine
from xlc.train.model import build_model
from xlc.train.schedule import lr_multiplier, total_steps
from xlc.train.step import Step, clip_sharded_head

META = DatasetMeta(name="t", num_labels=30, multi_label=False, num_features=200)


@pytest.mark.parametrize("schedule, expected", [
    ("constant", [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0]),
    ("linear", [0.25, 0.5, 0.75, 1.0, 1.0, 0.9, 0.5, 0.0]),
    ("cosine", [0.25, 0.5, 0.75, 1.0, 1.0, (1 + math.cos(math.pi / 10)) / 2, 0.5, 0.0]),
])
def test_warmup_then_decay(schedule, expected):
    m = lr_multiplier(schedule, warmup_steps=4, total_steps=14)  # decay over steps 4..14: p = (n - 4) / 10
    assert [m(n) for n in (0, 1, 2, 3, 4, 5, 9, 14)] == pytest.approx(expected)
    assert m(20) == pytest.approx(expected[-1])  # past the end: stays at the last value


def test_total_steps_counts_optimiser_steps():
    # 1610 rows on 2 ranks = 805 per rank, batch 64 -> 13 micro-batches per epoch; 3 epochs; 2 per step
    assert total_steps(epochs=3, rows=1610, world=2, batch_size=64, accumulation=2, max_steps=None) == 20
    assert total_steps(epochs=3, rows=1610, world=2, batch_size=64, accumulation=2, max_steps=7) == 4


def test_schedule_and_clipping_values_are_checked_at_load():
    with pytest.raises(ConfigError) as err:
        xconfig.from_dict({"name": "t", "data": "d", "train": {"schedule": "cos", "warmup_steps": -1,
                                                               "clip_grad_norm": 0, "data_order": "random"}})
    lines = str(err.value).splitlines()
    assert any(line.startswith("train.schedule='cos': expected one of constant, linear, cosine") for line in lines)
    assert any(line.startswith("train.warmup_steps=-1") for line in lines)
    assert any(line.startswith("train.clip_grad_norm=0") for line in lines)
    assert "train.data_order='random': expected one of exact, stream" in lines


def test_deepspeed_json_may_not_set_its_own_schedule_clipping_or_universal_loading(tmp_path):
    path = tmp_path / "ds.json"
    for extra, field in (({"gradient_clipping": 0.5}, "gradient_clipping=0.5"), ({"scheduler": {}}, "scheduler"),
                         ({"checkpoint": {"load_universal": True}}, "remove checkpoint.load_universal")):
        path.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", **extra}))
        with pytest.raises(ConfigError, match=field):
            xengine.deepspeed_config(str(path), batch_size=8, lr=1e-3, weight_decay=0.0, clip_grad_norm=1.0)


def _check_clip_by_whole_head_norm(rank: int, world: int) -> None:
    head = build_head("sharded_softmax", META.num_labels, 8)  # weight [C_local, 8], bias [C_local]
    full = [torch.zeros(META.num_labels, 8, requires_grad=True), torch.zeros(META.num_labels, requires_grad=True)]
    gen = torch.Generator().manual_seed(0)
    for p_full, p in zip(full, head.parameters()):
        p_full.grad = torch.randn(p_full.shape, generator=gen)
        p.grad = p_full.grad[head.label_start:head.label_end].clone()
    torch.nn.utils.clip_grad_norm_(full, 0.5)
    clip_sharded_head(head, 0.5)
    for p_full, p in zip(full, head.parameters()):
        assert_close(p.grad, p_full.grad[head.label_start:head.label_end])


def test_sharded_head_is_clipped_by_its_norm_over_all_shards(spawn_gloo):
    spawn_gloo(2, _check_clip_by_whole_head_norm)


def _check_steps_at_accumulation_boundaries(rank: int, world: int, ds_json: str) -> None:
    os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE=str(world))
    xengine.select_accelerator(use_gpu=False)
    cfg = xconfig.from_dict({"name": "t", "data": "unused", "head": {"name": "sharded_softmax"},
                             "backbone": {"hidden": [16], "dropout": 0.0}})
    torch.manual_seed(0)
    model, head = build_model(cfg, META)
    ds_config = xengine.deepspeed_config(ds_json, batch_size=8, lr=1e-2, weight_decay=0.0, clip_grad_norm=1.0)
    multiplier = lr_multiplier("linear", warmup_steps=2, total_steps=4)
    step = Step(model, head, ds_config, lr=1e-2, head_lr=1e-2, weight_decay=0.0, world=world,
                multiplier=multiplier, clip_head=1.0)
    gen = torch.Generator().manual_seed(rank)
    for i in range(8):
        boundary = i % 2 == 1  # gradient_accumulation_steps = 2
        before, engine_lr = head.weight.detach().clone(), step.engine.get_lr()[0]
        step.step(synthetic_batch(gen, 8, 5, META.num_features, META.num_labels))
        assert (not torch.equal(before, head.weight.detach())) == boundary, f"micro-batch {i}"
        if boundary:  # the head stepped with the engine's lr of this optimiser step: base x m(i // 2)
            assert step.head_opt.param_groups[0]["lr"] == pytest.approx(engine_lr)
            assert engine_lr == pytest.approx(1e-2 * multiplier(i // 2))
    assert step.engine.global_steps == 4


@pytest.mark.parametrize("world", [1, 2])
def test_head_optimiser_steps_once_per_accumulation_boundary(tmp_path, world, spawn_gloo):
    ds_json = tmp_path / "ds.json"
    ds_json.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": 2,
                                   "gradient_clipping": "auto", "zero_optimization": {"stage": 0}}))
    spawn_gloo(world, _check_steps_at_accumulation_boundaries, str(ds_json))
