"""The worker loop: one Ray Train worker = one DeepSpeed rank. Reads top to bottom as one run.

batch (Ray Data shard) -> backbone (DeepSpeed engine, data parallel) -> features [B, d]
features -> head (replicated inside the engine, or a `ShardedHead` outside it with its own AdamW) -> loss
epoch end: evaluate head.topk on the test split -> metrics; checkpoint via ray.train.report
rank 0 logs params/metrics/artifacts to the MLflow run the driver opened.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist

from xlc import config as xconfig
from xlc import data as xdata
from xlc.errors import ConfigError
from xlc.eval.metrics import inv_propensity
from xlc.heads import ShardedHead
from xlc.tracking import RunLogger
from xlc.train import checkpoint as ckpt
from xlc.train import engine as xengine
from xlc.train import stream
from xlc.train.checkpoint import Progress
from xlc.train.evaluation import all_reduce, collapse_metrics, evaluate, peak_memory_bytes
from xlc.train.model import build_model, parameter_count
from xlc.train.step import Step


def train_loop(loop_config: dict) -> None:
    cfg = xconfig.from_dict(loop_config["config"])
    xengine.select_accelerator(cfg.use_gpu)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = torch.device(f"cuda:{ctx.get_local_rank()}" if cfg.use_gpu else "cpu")
    torch.manual_seed(cfg.train.seed)
    if not cfg.use_gpu:
        torch.set_num_threads(max(1, int(os.environ.get("XLC_THREADS_PER_WORKER", "1"))))

    # ---- model and step: a sharded head stays outside the engine, with its own optimiser
    meta = xdata.read_meta(cfg.data)
    head_inputs = loop_config["head_inputs"]
    model, head = build_model(cfg, meta, head_inputs)
    head.to(device)
    sharded = isinstance(head, ShardedHead)
    ds_config = xengine.deepspeed_config(
        cfg.deepspeed, batch_size=cfg.train.batch_size, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
    trainer = Step(model, head, ds_config, lr=cfg.train.lr, head_lr=cfg.train.head_lr or cfg.train.lr,
                   weight_decay=cfg.train.weight_decay, world=world)
    engine = trainer.engine
    head_parameters = parameter_count(head)
    if sharded:  # every rank holds its own shard
        head_parameters = int(all_reduce(torch.tensor(head_parameters, device=device)))

    # ---- resume from the newest valid checkpoint, if Ray restored one
    progress = Progress()
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as directory:
            directory = ckpt.latest_valid(directory)
            if directory is not None:
                state = ckpt.read_state(directory)
                if state["world_size"] != world and xengine.zero_stage(ds_config) > 0:
                    raise ConfigError(
                        f"workers={world}: the checkpoint was written by {state['world_size']} workers with ZeRO "
                        f"stage {xengine.zero_stage(ds_config)}; resuming on another worker count needs stage 0"
                    )
                engine.load_checkpoint(str(directory), tag="engine", load_module_strict=True)
                if sharded:
                    ckpt.load_head_shard(directory, head, trainer.head_opt)
                if trainer.sparse_opt is not None:
                    ckpt.load_optimizer(directory, "sparse", trainer.sparse_opt)
                progress = Progress.from_state(state)

    logger = RunLogger(loop_config["tracking_uri"], loop_config["run_id"]) if rank == 0 else None
    if logger is not None:
        logger.tags({"world_size": world, "head_parameters": head_parameters, "resumed_from_step": progress.step})
    train_counts = torch.from_numpy(xdata.label_counts(cfg.data))
    inv_prop = inv_propensity(train_counts, meta.num_train, a=cfg.eval.psp_a, b=cfg.eval.psp_b)
    shard = ray.train.get_dataset_shard("train")

    def save_and_report(metrics: dict) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            engine.save_checkpoint(tmp, tag="engine", save_latest=False)
            written = []
            if sharded:
                written.append(ckpt.save_head_shard(directory, head, trainer.head_opt, rank))
            if rank == 0 and trainer.sparse_opt is not None:  # replicated: every rank holds the same state
                written.append(ckpt.save_optimizer(directory, "sparse", trainer.sparse_opt))
            if rank == 0 and head_inputs:
                written.append(ckpt.save_head_inputs(directory, head_inputs))
            if rank == 0:
                written.append(ckpt.write_state(
                    directory, {**vars(progress), "world_size": world, "config": cfg.to_dict()}
                ))
            if (directory / "engine").exists():  # DeepSpeed writes model states on rank 0 only at ZeRO-0
                written += ckpt.files_under(directory / "engine")
            ckpt.write_manifest(directory, rank, sorted(set(written)))
            if dist.is_initialized():
                dist.barrier()
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def scores(max_rows: int | None) -> dict:
        return evaluate(
            cfg.data, meta, engine.module, head, device, ks=cfg.eval.k, batch_size=cfg.train.batch_size,
            inv_prop=inv_prop, max_rows=max_rows, train_counts=train_counts,
        )

    def eval_metrics() -> dict:
        out = scores(cfg.eval.max_rows)
        if cfg.eval.collapse:
            out.update(collapse_metrics(cfg.data, meta, engine.module, head, device, cfg.train.batch_size))
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
        tic, running, n_running = time.perf_counter(), 0.0, 0
        batches = stream.epoch_batches(
            shard, cfg.train.batch_size, seed=cfg.train.seed + progress.epoch, drop_last=sharded
        )
        for i, table in enumerate(batches):
            if i < progress.step_in_epoch:  # resumed mid-epoch: these batches were trained before the stop
                continue
            batch = xdata.collate(table, meta.multi_label).to(device)
            loss = trainer.step(batch)
            progress.step, progress.step_in_epoch = progress.step + 1, progress.step_in_epoch + 1
            progress.samples_seen += len(batch) * world
            running, n_running = running + loss.item(), n_running + 1
            if logger is not None and progress.step % cfg.train.log_every_steps == 0:
                logger.metrics({"loss": running / n_running}, progress.step)
                seconds = progress.train_seconds + time.perf_counter() - tic
                print(f"[{cfg.name}] epoch {progress.epoch + 1}/{cfg.train.epochs} step {progress.step} "
                      f"loss {running / n_running:.4f} ({progress.samples_seen / max(seconds, 1e-9):.0f} samples/s)",
                      flush=True)  # reaches the driver's console through Ray's log forwarding
                running, n_running = 0.0, 0
            if cfg.train.checkpoint_every_steps and progress.step % cfg.train.checkpoint_every_steps == 0:
                progress.train_seconds += time.perf_counter() - tic
                tic = time.perf_counter()
                save_and_report({"step": progress.step, "epoch": progress.epoch})
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
        save_and_report(metrics)

    if not metrics:  # resumed a run that had already finished: report its evaluation again
        ray.train.report(eval_metrics())
