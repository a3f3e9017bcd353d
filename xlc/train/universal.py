"""DeepSpeed's universal checkpoint: the ZeRO partitions of W ranks made loadable by W' ranks.

At ZeRO 1-3 each rank saves its flat partition of the fp32 master weights and Adam moments, and DeepSpeed loads
them only at the world size and stage that wrote them. `ds_to_universal` rewrites them as one whole tensor per
parameter and state (`zero/NAME/{fp32,exp_avg,exp_avg_sq,step}.pt`), from which an engine built with
`checkpoint: {load_universal: true}` (`loading`) cuts its own partitions. The conversion is written beside the
checkpoint under a temporary name and renamed when complete; the checkpoint itself is only read.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from xlc.errors import ConfigError
from xlc.train import checkpoint as ckpt
from xlc.train.evaluation import barrier


def loading(ds_config: dict) -> dict:
    """`ds_config` for an engine that loads a universal checkpoint (DeepSpeed reads the flag when it is built)."""
    return {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True}}


def convert(engine_dir: Path, out: Path) -> None:
    """Write the universal form of the DeepSpeed checkpoint `engine_dir` (one tag's files, the tag its name) as
    `out/TAG`, replacing whatever a conversion cut short left at `out`.

    DeepSpeed's converter reads the files unrestricted, so each is first loaded with `weights_only=True` (as
    `engine.load_checkpoint` reads them): one holding pickled code raises `DataError` and nothing in it runs. A
    failure of the converter itself raises `ConfigError` naming the checkpoint and DeepSpeed's reason."""
    from deepspeed.checkpoint import ds_to_universal

    from xlc.train.engine import deepspeed_globals

    allowed = deepspeed_globals()
    for path in sorted(engine_dir.glob("*.pt")):
        ckpt.load_file(path, allowed=allowed)
    partial = out.with_name(f"{out.name}.partial")
    for leftover in (out, partial):
        shutil.rmtree(leftover, ignore_errors=True)
    args = argparse.Namespace(
        input_folder=str(engine_dir), output_folder=str(partial / engine_dir.name),
        num_extract_workers=1, num_merge_workers=1,  # in this process: no pool of processes importing DeepSpeed
        keep_temp_folder=False, strict=True,
        inject_missing_state=True,  # the version record Megatron adds; xlc's models have no tensor parallelism
    )
    try:
        with contextlib.redirect_stdout(sys.stderr):  # it reports progress on stdout, where `--json` answers
            ds_to_universal.main(args)
    except Exception as e:  # noqa: BLE001 (any failure of the converter means: this checkpoint cannot move)
        shutil.rmtree(partial, ignore_errors=True)
        reason = " ".join(str(e).split()) or type(e).__name__
        message = f"{engine_dir}: DeepSpeed cannot convert it to a universal checkpoint ({reason})"
        raise ConfigError(message) from None
    partial.rename(out)


def repair_loaded_optimizer(engine, source: Path, tag: str) -> None:
    """After `engine` loaded the universal checkpoint `source` (tag `tag`), undo two slips of DeepSpeed 0.19.8's
    ZeRO-3 universal loader (`load_hp_checkpoint_state_from_checkpoint_dir_stage3`). It gives every optimiser
    parameter group the hyperparameters of the first, while xlc's differ in lr (the backbone's `train.lr`, a
    replicated head's `train.head_lr`), so each group gets its own saved ones back; and it gives every partition
    one shared `step` tensor, which a fused Adam step then advances once per partition, so each gets its own
    copy. Stages 1-2 load both right already; for them this changes nothing."""
    from xlc.train.engine import deepspeed_globals

    saved = ckpt.load_file(source / tag / "zero" / "optimizer_state.pt", allowed=deepspeed_globals())
    groups = engine.optimizer.param_groups
    assert len(groups) == len(saved["param_groups"]), "the saved optimiser has other parameter groups"
    for group, settings in zip(groups, saved["param_groups"]):
        group.update({key: value for key, value in settings.items() if key != "params"})
    for state in engine.optimizer.optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


@contextlib.contextmanager
def converted(directory: Path, tag: str, rank: int) -> Iterator[Path]:
    """The universal form of checkpoint `directory`'s engine files (`directory/tag`), for every rank to load.

    Rank 0 converts them into `.NAME.universal` beside the checkpoint (a leftover of an interrupted resume is
    converted afresh, never trusted) and hands its outcome to every rank, so a refused checkpoint raises the
    same error everywhere instead of leaving ranks in a collective. A rank that cannot see rank 0's copy (its
    checkpoint was downloaded to a disk of its own node) converts its own. On exit, after every rank has
    loaded, the copies are deleted."""
    out = directory.parent / f".{directory.name}.universal"
    outcome: list[Exception | None] = [None]
    if rank == 0:
        try:
            convert(directory / tag, out)
        except Exception as e:  # noqa: BLE001 (whatever stops rank 0 must reach every rank)
            outcome[0] = e
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        raise outcome[0]
    mine = out
    if not (out / tag).is_dir():
        mine = directory.parent / f".{directory.name}.universal.{rank}"
        convert(directory / tag, mine)
    try:
        yield mine
        barrier()
    finally:
        if rank == 0 or mine != out:
            shutil.rmtree(mine, ignore_errors=True)
