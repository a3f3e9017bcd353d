"""`xlc train CONFIG --local`: the worker loop without Ray, for debugging and for machines without Ray.

One process by default; under `torchrun --nproc_per_node N -m xlc.cli train CONFIG --local` one rank per
process (RANK, WORLD_SIZE, LOCAL_RANK from the launcher; gloo on CPU, nccl on GPU). Each rank reads the
train split's Parquet files itself (`xlc.data.iter_tables`: batch i of a seeded per-epoch shuffle goes to
rank i % world), checkpoints go to `storage.path/NAME/checkpoint_NNNNNN` (the `storage.keep` newest are
kept, and with `storage.keep_best` a copy of the best; the same name again resumes from the newest valid one,
`--restart` deletes them and starts over), and rank 0 logs to MLflow when it is installed (without it,
training, evaluation and checkpoints run as usual and tracking is off). The dataset may lie behind a pyarrow.fs
URI (s3://...); `storage.path` must be a filesystem path (a checkpoint is renamed into place when every rank
has written it), so an object store there exits 2.
Nothing here imports Ray.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from xlc.config import RunConfig
from xlc.data.schema import DatasetMeta
from xlc.errors import ConfigError
from xlc.train import checkpoint as ckpt
from xlc.train.driver import (check_shared_storage, exact_epoch, fit_inputs, keep_best, prepare, reported,
                              restored, resume_point, run_dir, start_over)
from xlc.train.evaluation import barrier
from xlc.train.worker import train_loop

class LocalRuntime:
    def __init__(self, cfg: RunConfig, meta: DatasetMeta, rank: int, world: int, device: torch.device, logger):
        self.cfg, self.meta = cfg, meta
        self.rank, self.world, self.device, self.logger = rank, world, device, logger
        self.root = Path(run_dir(cfg))  # a filesystem path: `train` refuses an object store
        found = ckpt.checkpoint_dirs(self.root)
        self._index = int(found[-1].name.removeprefix(ckpt.PREFIX)) if found else 0
        barrier()  # every rank has read the index before any rank writes a checkpoint

    def epoch_tables(self, epoch: int, drop_last: bool):
        return exact_epoch(self.cfg, self.rank, self.world, epoch, drop_last)

    def restored(self) -> AbstractContextManager[Path | None]:
        return restored(self.root)

    def report(self, metrics: dict, write: Callable[[Path], None] | None = None) -> None:
        """Checkpoint when `write` is given; the metrics reach the launcher as `train_loop`'s return value."""
        if write is None:
            return
        self._index += 1
        final = self.root / f"{ckpt.PREFIX}{self._index:06d}"
        partial = self.root / f".{final.name}.partial"  # renamed when every rank has written its files
        if self.rank == 0:
            shutil.rmtree(partial, ignore_errors=True)  # left by a run killed mid-write
            partial.mkdir(parents=True)
        barrier()
        write(partial)
        barrier()
        if self.rank == 0:
            partial.rename(final)
            keep_best(self.cfg, final)
            ckpt.prune(self.root, self.cfg.storage.keep)


def init_distributed(use_gpu: bool) -> tuple[int, int, torch.device]:
    """(rank, world, device) of this process, with the default process group initialised: from torchrun's
    environment, or a group of one (DeepSpeed and the sharded heads then run as on any world size)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device("cpu")
    if use_gpu:
        if not torch.cuda.is_available():
            raise ConfigError("use_gpu=true: no CUDA device is visible; set use_gpu=false to train on the CPU")
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        torch.cuda.set_device(device)
    backend = "nccl" if use_gpu else "gloo"
    if "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:  # torchrun
        dist.init_process_group(backend)
    else:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")  # what DeepSpeed reads
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return rank, world, device


def load_tracking():
    """`xlc.tracking`, or None when MLflow is not installed."""
    try:
        from xlc import tracking
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] != "mlflow":
            raise
        return None
    return tracking


def train(cfg: RunConfig, restart: bool = False) -> dict | None:
    """Run (or resume; `restart`: start over from step 0) `cfg` on this process's rank: {"run_id" (None when
    tracking is off), "metrics"} on rank 0, None on the other ranks."""
    cfg, meta = prepare(cfg)
    if not run_dir(cfg).is_local:
        raise ConfigError(f"storage.path={cfg.storage.path!r}: --local writes checkpoints to a filesystem path (local "
                          "or shared); give one, or train without --local (Ray Train uploads them to object storage)")
    check_shared_storage(cfg, int(os.environ.get("GROUP_WORLD_SIZE", 1)))  # torchrun: its agents, one per node
    if not restart:
        resume_point(run_dir(cfg))  # every checkpoint corrupt: exit 2 now, not a silent restart from step 0
    rank, world, device = init_distributed(cfg.use_gpu)
    try:
        if restart and rank == 0:
            start_over(cfg)
        barrier()
        return _train(cfg, meta, rank, world, device, restart)
    finally:
        dist.destroy_process_group()


def _train(cfg: RunConfig, meta: DatasetMeta, rank: int, world: int, device: torch.device,
           restart: bool) -> dict | None:
    tracking = load_tracking() if rank == 0 else None
    uri = run_id = logger = None
    ending = nullcontext()
    if tracking is not None:
        uri, run_id, _ = tracking.open_training_run(cfg, meta, world, fresh=restart)
        logger, ending = tracking.RunLogger(uri, run_id), tracking.ending(uri, run_id)
    elif rank == 0:
        print("xlc: mlflow is not installed; tracking is off (metrics are printed, checkpoints written)",
              file=sys.stderr)
    with ending:  # from here on, an exception or an interrupt ends the MLflow run as FAILED or KILLED
        inputs = [fit_inputs(cfg) if rank == 0 else None]
        dist.broadcast_object_list(inputs, src=0)  # fitted once (a tree head clusters the labels), the same everywhere
        runtime = LocalRuntime(cfg, meta, rank, world, device, logger)
        with logger.system_metrics() if logger is not None else nullcontext():
            metrics = train_loop(cfg, runtime, inputs[0])
        if rank != 0:
            return None
        if tracking is not None:
            from xlc.report import log_run_report

            with restored(runtime.root) as final:
                log_run_report(uri, run_id, cfg.data, final)
    return {"run_id": run_id, "metrics": reported(metrics)}
