"""The worker loop: one rank of a run, under Ray Train or `xlc train --local`. Reads top to bottom as one run.

batch (this rank's share of the train split) -> backbone (DeepSpeed engine, data parallel) -> features [B, d]
features -> head (replicated inside the engine, or a `ShardedHead` outside it with its own AdamW) -> loss
epoch end: evaluate head.topk on the test split -> metrics; every rank writes its checkpoint files
rank 0 logs metrics to the MLflow run the driver opened (when tracking is on).

What differs between the launchers is the `Runtime` passed in (`xlc/train/ray_runtime.py`: Ray Data shard,
`ray.train` checkpoints; `xlc/train/local.py`: Parquet files read directly, a local checkpoint directory).
Nothing here imports Ray or MLflow.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import torch
import torch.distributed as dist

from xlc import data as xdata
from xlc.config import RunConfig
from xlc.eval.metrics import inv_propensity
from xlc.heads import ShardedHead
from xlc.train import engine as xengine
from xlc.train import persist
from xlc.train.checkpoint import Progress
from xlc.heads.scored import classifier_rows
from xlc.train.evaluation import all_reduce, collapse_metrics, evaluate, peak_memory_bytes
from xlc.train.model import build_model, parameter_count
from xlc.train.schedule import lr_multiplier, total_steps
from xlc.train.step import Step


class Runtime(Protocol):
    """What the loop needs from its launcher."""

    rank: int
    world: int
    device: torch.device
    logger: Any  # `xlc.tracking.RunLogger` on rank 0 when tracking is on, else None

    def epoch_tables(self, epoch: int, drop_last: bool) -> Iterable[pa.Table]:
        """This rank's batches of one epoch, as many on every rank (each step runs collectives)."""

    def restored(self) -> AbstractContextManager[Path | None]:
        """The newest valid checkpoint directory to resume from, or None."""

    def report(self, metrics: dict, write: Callable[[Path], None] | None = None) -> None:
        """Hand `metrics` to the launcher; with `write`, also checkpoint: every rank calls write(directory)."""


def train_loop(cfg: RunConfig, runtime: Runtime, head_inputs: dict) -> dict:
    """Train (or resume) `cfg` on this rank; returns the final evaluation (the same on every rank)."""
    xengine.select_accelerator(cfg.use_gpu)
    rank, world, device = runtime.rank, runtime.world, runtime.device
    torch.manual_seed(cfg.train.seed)

    # ---- model and step: a sharded head stays outside the engine, with its own optimiser
    meta = xdata.read_meta(cfg.data)
    model, head = build_model(cfg, meta, head_inputs)
    head.to(device)
    sharded = isinstance(head, ShardedHead)
    ds_config = xengine.deepspeed_config(cfg.deepspeed, batch_size=cfg.train.batch_size, lr=cfg.train.lr,
                                         weight_decay=cfg.train.weight_decay, clip_grad_norm=cfg.train.clip_grad_norm)
    # one lr multiplier for every optimiser, over the run's optimiser steps (micro-batches / accumulation)
    multiplier = lr_multiplier(cfg.train.schedule, cfg.train.warmup_steps, total_steps(
        epochs=cfg.train.epochs, rows=meta.num_train, world=world, batch_size=cfg.train.batch_size,
        accumulation=xengine.accumulation_steps(ds_config), max_steps=cfg.train.max_steps,
    ))
    head_parameters = parameter_count(head)  # before the engine: ZeRO-3 leaves each rank a partition

    # ---- the engine, and the newest valid checkpoint loaded into it if the runtime has one (on another worker
    # count at ZeRO 1-3 the engine is built to read DeepSpeed's universal form of it: `persist.py`)
    progress = Progress()
    with runtime.restored() as directory:
        trainer = Step(model, head, persist.engine_config(ds_config, directory, world), lr=cfg.train.lr,
                       head_lr=cfg.train.head_lr or cfg.train.lr, weight_decay=cfg.train.weight_decay, world=world,
                       multiplier=multiplier, clip_head=cfg.train.clip_grad_norm)
        if directory is not None:
            progress = persist.restore(directory, trainer, rank, world)
    engine = trainer.engine
    if sharded:  # every rank holds its own shard
        head_parameters = int(all_reduce(torch.tensor(head_parameters, device=device)))

    logger = runtime.logger
    if logger is not None:
        logger.tags({"world_size": world, "head_parameters": head_parameters, "resumed_from_step": progress.step})
    train_counts = torch.from_numpy(xdata.label_counts(cfg.data))
    inv_prop = inv_propensity(train_counts, meta.num_train, a=cfg.eval.psp_a, b=cfg.eval.psp_b)

    def checkpoint(metrics: dict) -> Callable[[Path], None]:
        """What every rank writes of one checkpoint (with `metrics`, for `storage.keep_best`)."""
        state = {**vars(progress), "config": cfg.to_dict(), "metrics": metrics}
        return lambda directory: persist.save(directory, trainer, rank, world, state, head_inputs)

    def scores(max_rows: int | None) -> dict:
        return evaluate(
            cfg.data, meta, engine.module, head, device, ks=cfg.eval.k, batch_size=cfg.train.batch_size,
            inv_prop=inv_prop, max_rows=max_rows, train_counts=train_counts,
        )

    def eval_metrics() -> dict:
        out = scores(cfg.eval.max_rows)
        if cfg.eval.collapse:
            with xengine.gathered(head):  # ZeRO-3 partitions a replicated head's weights: whole ones for this read
                classifier = classifier_rows(head, meta.num_labels)
            out.update(collapse_metrics(cfg.data, meta, engine.module, head, classifier, device, cfg.train.batch_size))
        peak = all_reduce(torch.tensor(peak_memory_bytes(device), device=device), op=dist.ReduceOp.MAX)
        out.update(
            epoch=progress.epoch, step=progress.step, train_seconds=progress.train_seconds,
            peak_memory_bytes=int(peak), head_parameters=head_parameters,
            samples_per_second=progress.samples_seen / max(progress.train_seconds, 1e-9),
        )
        return out

    # ---- train
    max_steps = cfg.train.max_steps or float("inf")
    metrics: dict[str, float] = {}
    while progress.epoch < cfg.train.epochs and progress.step < max_steps:
        engine.train()
        tic, running, n_running = time.perf_counter(), torch.zeros((), device=device), 0
        for i, table in enumerate(runtime.epoch_tables(progress.epoch, drop_last=sharded)):
            if i < progress.step_in_epoch:  # resumed mid-epoch: these batches were trained before the stop
                continue
            batch = xdata.collate(table, meta.multi_label).to(device)
            loss = trainer.step(batch)
            progress.step, progress.step_in_epoch = progress.step + 1, progress.step_in_epoch + 1
            progress.samples_seen += len(batch) * world
            running, n_running = running + loss.float(), n_running + 1  # summed on the device: no sync per step
            if rank == 0 and progress.step % cfg.train.log_every_steps == 0:
                mean_loss = running.item() / n_running
                if logger is not None:
                    logger.metrics({"loss": mean_loss}, progress.step)
                seconds = progress.train_seconds + time.perf_counter() - tic
                # stderr: stdout is the result's (--json). Not print(): Ray Train patches it and, where Ray has
                # wrapped sys.stderr, emits each line twice; Ray forwards the stream to the driver once.
                sys.stderr.write(f"[{cfg.name}] epoch {progress.epoch + 1}/{cfg.train.epochs} step {progress.step} "
                                 f"loss {mean_loss:.4f} ({progress.samples_seen / max(seconds, 1e-9):.0f} samples/s)\n")
                sys.stderr.flush()
                running, n_running = torch.zeros((), device=device), 0
            if cfg.train.checkpoint_every_steps and progress.step % cfg.train.checkpoint_every_steps == 0:
                progress.train_seconds += time.perf_counter() - tic
                tic = time.perf_counter()
                marks = {"step": progress.step, "epoch": progress.epoch}
                runtime.report(marks, checkpoint(marks))
            if cfg.eval.every_steps and progress.step % cfg.eval.every_steps == 0:
                progress.train_seconds += time.perf_counter() - tic  # the probe's own time is not training
                probe = scores(cfg.eval.probe_rows)
                if logger is not None:
                    logger.metrics({"probe/p@1": probe["p@1"], "probe/train_seconds": progress.train_seconds,
                                    "probe/samples_seen": progress.samples_seen}, progress.step)
                tic = time.perf_counter()
            if progress.step >= max_steps:
                break
        progress.train_seconds += time.perf_counter() - tic
        progress.epoch, progress.step_in_epoch = progress.epoch + 1, 0

        metrics = eval_metrics()
        if logger is not None:
            logger.metrics({k: v for k, v in metrics.items() if k not in ("epoch", "step")}, progress.step)
        runtime.report(metrics, checkpoint(metrics))

    if not metrics:  # resumed a run that had already finished: report its evaluation again
        metrics = eval_metrics()
        runtime.report(metrics)
    return metrics
