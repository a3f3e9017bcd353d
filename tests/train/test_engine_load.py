"""`xlc.train.engine.load_checkpoint`: DeepSpeed's checkpoint files load with `weights_only=True`.

DeepSpeed's own loader unpickles with `weights_only=False`, so a checkpoint file rewritten to hold an object
whose `__reduce__` calls a function would run it on resume. Here a real checkpoint saved at ZeRO 0 and 1 (the
stages whose files hold DeepSpeed's own classes) loads back, and the same file with a payload that would create
a marker file is refused with a `DataError` naming it, the marker never created.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from tests.helpers import Payload
from xlc import config as xconfig
from xlc.bench.train import synthetic_batch
from xlc.data.schema import DatasetMeta
from xlc.errors import DataError
from xlc.train import checkpoint as ckpt
from xlc.train import engine as xengine
from xlc.train.model import build_model
from xlc.train.step import Step

META = DatasetMeta(name="t", num_labels=30, multi_label=False, num_features=200)
REFUSED = (r": refusing to load it: it holds pickled objects other than weights "
           r"\(Unsupported global: GLOBAL io.open was not an allowed global by default\)$")


def _step(stage: int) -> Step:
    cfg = xconfig.from_dict({"name": "t", "data": "unused", "head": {"name": "softmax"},
                             "backbone": {"hidden": [8], "dropout": 0.0}})
    model, head = build_model(cfg, META)
    ds_config = xengine.deepspeed_config(None, batch_size=4, lr=1e-2, weight_decay=0.0, clip_grad_norm=None)
    ds_config["zero_optimization"] = {"stage": stage}
    return Step(model, head, ds_config, lr=1e-2, head_lr=1e-2, weight_decay=0.0, world=1)


def _check_weights_only_round_trip_and_refusal(rank: int, world: int, root: str) -> None:
    os.environ.update(LOCAL_RANK="0", RANK="0", WORLD_SIZE="1")
    xengine.select_accelerator(use_gpu=False)
    for stage in (0, 1):
        directory, marker = Path(root) / f"zero{stage}", Path(root) / f"ran-{stage}"
        trained = _step(stage)
        trained.step(synthetic_batch(torch.Generator().manual_seed(0), 4, 3, META.num_features, META.num_labels))
        trained.engine.save_checkpoint(str(directory), tag="engine", save_latest=False)
        fresh = _step(stage)
        xengine.load_checkpoint(fresh.engine, directory, tag="engine")
        for (name, want), got in zip(trained.engine.module.state_dict().items(), fresh.engine.module.state_dict().values()):
            torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
        assert fresh.engine.global_steps == 1

        module_file = directory / ckpt.ENGINE_MODULE_FILE
        doctored = torch.load(module_file, weights_only=False)  # the test's own file
        doctored["client_state"] = Payload(str(marker))
        torch.save(doctored, module_file)
        with pytest.raises(DataError, match=re.escape(str(module_file)) + REFUSED):
            xengine.load_checkpoint(_step(stage).engine, directory, tag="engine")
        assert not marker.exists()


@pytest.mark.slow  # ~20 s on the shared 2-core machine: a spawned process importing DeepSpeed, two engines per stage
def test_deepspeed_checkpoints_load_weights_only_and_refuse_pickled_code(tmp_path, spawn_gloo):
    spawn_gloo(1, _check_weights_only_round_trip_and_refusal, str(tmp_path))


def test_our_checkpoint_files_refuse_pickled_code(tmp_path):
    path, marker = tmp_path / "head_shard_0.pt", tmp_path / "ran"
    torch.save({"tensors": {"weight": torch.ones(2)}, "rest": Payload(str(marker))}, path)
    with pytest.raises(DataError, match=re.escape(str(path)) + REFUSED):
        ckpt.load_file(path)
    assert not marker.exists()
