"""A run's state in a checkpoint directory: `save` (each rank its files and manifest) and `restore` (on any worker
count), for the worker loop.

`restore` on the world size that saved: DeepSpeed reads its own files. ZeRO-0 keeps whole tensors, which load on
any world size. At ZeRO 1-3 each rank's files hold its partition, which DeepSpeed reads only on the world size
and stage that wrote it; on another one they go through DeepSpeed's universal checkpoint (`universal.py`;
`engine_config` builds the engine to read it). A change of stage is allowed within DeepSpeed's file layouts
(stages 1 and 2 share one) and refused across them (its universal loader finds no module states of another
layout). The rest of the state does not depend on the layout: a label-sharded head's rows and Adam moments are
cut for each new label range (`checkpoint.load_head_shard`), the sparse-table optimiser is replicated, and the
random generators are restored at the same world size only (on another one the draws are another run's anyway).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from xlc.errors import ConfigError
from xlc.train import checkpoint as ckpt
from xlc.train import engine as xengine
from xlc.train import universal
from xlc.train.checkpoint import Progress

if TYPE_CHECKING:
    from xlc.train.step import Step

TAG = "engine"  # DeepSpeed's tag: its files go to DIR/engine/
LAYOUTS = {0: "ZeRO stage 0", 1: "ZeRO stages 1-2", 3: "ZeRO stage 3"}  # DeepSpeed's file layouts, by key


def save(directory: Path, trainer: Step, rank: int, world: int, state: dict, head_inputs: dict) -> None:
    """This rank's files of one checkpoint and its manifest; rank 0 also writes `state` (with the world size, the
    ZeRO stage and how many manifests to expect) as state.json, the replicated optimiser and the head inputs."""
    trainer.engine.save_checkpoint(str(directory), tag=TAG, save_latest=False)
    written = ckpt.engine_files(directory / TAG, rank)  # DeepSpeed decides which rank writes what
    written.append(ckpt.save_rng(directory, rank))
    if trainer.sharded:
        written.append(ckpt.save_head_shard(directory, trainer.head, trainer.head_opt, rank))
    if rank == 0 and trainer.sparse_opt is not None:  # replicated: every rank holds the same state
        written.append(ckpt.save_optimizer(directory, "sparse", trainer.sparse_opt))
    if rank == 0 and head_inputs:
        written.append(ckpt.save_head_inputs(directory, head_inputs))
    if rank == 0:
        written.append(ckpt.write_state(directory, {**state, "world_size": world, "manifests": world,
                                                   "zero_stage": trainer.engine.zero_optimization_stage()}))
    ckpt.write_manifest(directory, rank, sorted(set(written)))


def _layout(stage: int) -> int:
    return {2: 1}.get(stage, stage)


def _saved_layout(directory: Path) -> int:
    """The layout of checkpoint `directory`'s engine files: 3 when each rank wrote its own module states (ZeRO-3),
    1 when each wrote its partition of the optimiser state (ZeRO 1-2, fp32 or 16-bit), else 0 (whole tensors)."""
    if any((directory / TAG).glob("zero_pp_rank_*_model_states.pt")):
        return 3
    return 1 if any((directory / TAG).glob("*zero_pp_rank_*_optim_states.pt")) else 0


def _needs_universal(directory: Path, world: int, stage: int) -> bool:
    """Whether checkpoint `directory` loads through a universal conversion on `world` ranks at ZeRO `stage`;
    `ConfigError` when it cannot load there at all."""
    saved = _saved_layout(directory)
    if saved != _layout(stage):
        raise ConfigError(
            f"{directory}: written at {LAYOUTS[saved]}, this run uses stage {stage}; DeepSpeed moves a checkpoint "
            f"between worker counts but not out of its stage group (0, 1-2 or 3): resume at {LAYOUTS[saved]}, or "
            "start over with --restart")
    state = ckpt.read_state(directory)
    # a checkpoint from before xlc recorded its stage (2026-11) counts as written at this one
    return saved > 0 and (state["world_size"] != world or state.get("zero_stage", stage) != stage)


def engine_config(ds_config: dict, directory: Path | None, world: int) -> dict:
    """The DeepSpeed config to build the engine with, to resume from `directory` (None: a new run) on `world`
    ranks: set to load a universal checkpoint when the saved partitions need one."""
    if directory is None or not _needs_universal(directory, world, xengine.zero_stage(ds_config)):
        return ds_config
    return universal.loading(ds_config)


def restore(directory: Path, trainer: Step, rank: int, world: int) -> Progress:
    """Load checkpoint `directory` into `trainer` (built with `engine_config`) on this rank; where it stood."""
    state = ckpt.read_state(directory)
    if trainer.engine.load_universal_checkpoint():
        with universal.converted(directory, TAG, rank) as source:
            xengine.load_checkpoint(trainer.engine, source, tag=TAG)  # + the lr schedule and step count
            universal.repair_loaded_optimizer(trainer.engine, source, TAG)
    else:
        xengine.load_checkpoint(trainer.engine, directory, tag=TAG)
    if trainer.sharded:
        ckpt.load_head_shard(directory, trainer.head, trainer.head_opt)
    if trainer.sparse_opt is not None:
        ckpt.load_optimizer(directory, "sparse", trainer.sparse_opt)
    if state["world_size"] == world:
        ckpt.load_rng(directory, rank)
    return Progress.from_state(state)
