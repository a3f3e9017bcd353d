"""The worker loop's runtime under Ray Train (`trainer.py` runs `train_loop_per_worker` on every worker).

Rank and device from the Ray Train context; batches read by each worker in the (seed, epoch) order of
`data_order: exact` (`driver.exact_epoch`, as `--local` reads them), or from its split of the Ray Data stream
(`stream.py`, `data_order: stream`); checkpoints saved by `ray.train.report` (each worker writes into a
directory of its own, Ray merges them under `storage_path/name`, uploading them to an object store; Ray
deletes all but the `storage.keep` newest, and rank 0 keeps a copy of the best with `storage.keep_best`) and
restored from the newest one there that verifies (`driver.restored`: listed through pyarrow.fs, so also one
Ray had not recorded when the run stopped; from an object store, downloaded).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import ray.train
import torch

from xlc import config as xconfig
from xlc.config import RunConfig
from xlc.data.location import Location
from xlc.tracking import RunLogger
from xlc.train import stream
from xlc.train.driver import exact_epoch, keep_best, restored
from xlc.train.evaluation import barrier
from xlc.train.worker import train_loop


class RayRuntime:
    def __init__(self, cfg: RunConfig, tracking_uri: str, run_id: str, run_dir: Location):
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = torch.device(f"cuda:{context.get_local_rank()}" if cfg.use_gpu else "cpu")
        if not cfg.use_gpu:  # workers share the machine's cores
            torch.set_num_threads(max(1, int(os.environ.get("XLC_THREADS_PER_WORKER", "1"))))
        self.logger = RunLogger(tracking_uri, run_id) if self.rank == 0 else None
        self.cfg = cfg
        self._shard = ray.train.get_dataset_shard("train") if cfg.train.data_order == "stream" else None
        self._run_dir = run_dir

    def epoch_tables(self, epoch: int, drop_last: bool):
        if self._shard is None:  # data_order exact
            return exact_epoch(self.cfg, self.rank, self.world, epoch, drop_last)
        # Ray Data's split is equal per worker, so every rank gets as many batches
        return stream.epoch_batches(self._shard, self.cfg.train.batch_size, seed=self.cfg.train.seed + epoch,
                                    drop_last=drop_last)

    def restored(self) -> AbstractContextManager[Path | None]:
        return restored(self._run_dir)  # every checkpoint there, whether Ray recorded it or not

    def report(self, metrics: dict, write: Callable[[Path], None] | None = None) -> None:
        if write is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            write(Path(tmp))
            barrier()
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        if self.cfg.storage.keep_best is not None:
            barrier()  # every rank's files are in the checkpoint Ray persisted (a filesystem path: config.py)
            if self.rank == 0:
                keep_best(self.cfg, Path(ray.train.get_checkpoint().path))


def train_loop_per_worker(loop_config: dict) -> None:
    cfg = xconfig.from_dict(loop_config["config"])
    runtime = RayRuntime(cfg, loop_config["tracking_uri"], loop_config["run_id"], loop_config["run_dir"])
    with runtime.logger.system_metrics() if runtime.logger is not None else nullcontext():  # rank 0's node
        train_loop(cfg, runtime, loop_config["head_inputs"])
