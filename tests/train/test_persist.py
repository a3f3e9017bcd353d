"""`xlc.train.persist.engine_config`: which checkpoints need DeepSpeed's universal form to resume, and which cannot
resume at all. The checkpoints here are a state.json and empty files named as DeepSpeed names them at each stage:
the rule reads names and state only. (Real engines resume on 3 and 1 ranks in tests/train/test_zero.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from xlc.errors import ConfigError
from xlc.train import checkpoint as ckpt
from xlc.train import persist

FILES = {  # DeepSpeed's files of a 2-rank checkpoint, by stage (bf16 ZeRO-1 prefixes its optimiser files `bf16_`)
    0: ["mp_rank_00_model_states.pt"],
    1: ["mp_rank_00_model_states.pt", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"],
    2: ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt"],
    3: [f"zero_pp_rank_{r}_mp_rank_00_{kind}_states.pt" for r in (0, 1) for kind in ("model", "optim")],
}


def _checkpoint(tmp_path: Path, stage: int, recorded: bool = True) -> Path:
    """A checkpoint of 2 ranks at ZeRO `stage`; `recorded=False`: without the stage in state.json (older xlc)."""
    directory = tmp_path / f"checkpoint_zero{stage}{'' if recorded else '_unrecorded'}"
    (directory / "engine").mkdir(parents=True)
    for name in FILES[stage]:
        (directory / "engine" / name).touch()
    ckpt.write_state(directory, {"world_size": 2, **({"zero_stage": stage} if recorded else {})})
    return directory


def _universal(directory: Path, world: int, stage: int) -> bool:
    ds_config = persist.engine_config({"zero_optimization": {"stage": stage}}, directory, world)
    return ds_config.get("checkpoint", {}).get("load_universal", False)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_partitions_move_through_the_universal_form_on_another_world_size(tmp_path, stage):
    directory = _checkpoint(tmp_path, stage)
    assert not _universal(directory, 2, stage)  # DeepSpeed reads its own partitions
    assert _universal(directory, 3, stage) and _universal(directory, 1, stage)
    assert persist.engine_config({"zero_optimization": {"stage": stage}}, None, 3) == {
        "zero_optimization": {"stage": stage}}  # a new run


def test_stages_1_and_2_share_a_layout_and_zero0_loads_anywhere(tmp_path):
    assert _universal(_checkpoint(tmp_path, 1), 2, 2) and _universal(_checkpoint(tmp_path, 2), 2, 1)
    assert not _universal(_checkpoint(tmp_path, 2, recorded=False), 2, 1)  # unrecorded: taken as this stage
    assert not _universal(_checkpoint(tmp_path, 0), 3, 0)  # whole tensors


@pytest.mark.parametrize(("saved", "stage", "written"), [(0, 2, "ZeRO stage 0"), (2, 0, "ZeRO stages 1-2"),
                                                         (3, 1, "ZeRO stage 3"), (2, 3, "ZeRO stages 1-2")])
def test_a_move_across_deepspeed_layouts_is_refused_in_one_line(tmp_path, saved, stage, written):
    directory = _checkpoint(tmp_path, saved)
    with pytest.raises(ConfigError) as err:
        _universal(directory, 3, stage)
    assert str(err.value) == (
        f"{directory}: written at {written}, this run uses stage {stage}; DeepSpeed moves a checkpoint between "
        f"worker counts but not out of its stage group (0, 1-2 or 3): resume at {written}, or start over with "
        "--restart")
