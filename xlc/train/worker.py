"""The worker loop: one Ray Train worker = one DeepSpeed rank. Reads top to bottom as one run.

batch (Ray Data shard) -> backbone (DeepSpeed engine, data parallel) -> features [B, d]
features -> head (replicated inside the engine, or label-sharded outside it with its own AdamW) -> loss
epoch end: evaluate head.topk on the test split -> metrics; checkpoint via ray.train.report
rank 0 logs params/metrics/artifacts to the MLflow run the driver opened.
"""

from __future__ import annotations

import math
import os
import resource
import tempfile
import time
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist

from xlc import config as xconfig
from xlc import data as xdata
from xlc.backbones import build_backbone
from xlc.eval.collapse import NCAccumulator
from xlc.eval.metrics import RankingMetrics, inv_propensity
from xlc.errors import ConfigError
from xlc.heads import build_head
from xlc.tracking import RunLogger
from xlc.train import checkpoint as ckpt
from xlc.train import engine as xengine
from xlc.train import stream


class Model(torch.nn.Module):
    """The data-parallel part: backbone, plus the head when it is replicated (not label-sharded)."""

    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Module | None):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, batch) -> torch.Tensor:
        return self.backbone(batch)  # [B, d]


def is_sharded(head: torch.nn.Module) -> bool:
    return hasattr(head, "label_sharded")


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def all_reduce(values: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values, op=op)
    return values


FREQ_EDGES = (0, 1, 2, 5, 10, 50, 100, 1000)  # training-count buckets: 0, 1, 2-4, 5-9, ..., 1000+


class FrequencyBuckets:
    """recall@k of (test row, true label) pairs grouped by the label's training count: head vs tail."""

    def __init__(self, train_counts: torch.Tensor, k: int):
        self.k = k
        self.bucket = torch.bucketize(train_counts, torch.tensor(FREQ_EDGES[1:]), right=True)  # [L]
        self.sums = torch.zeros(2, len(FREQ_EDGES), dtype=torch.float64)  # [hits, pairs] x buckets

    def update(self, labels: torch.Tensor, truth: torch.Tensor) -> None:
        truth = truth.reshape(len(truth), -1)  # [B, M]
        valid = truth >= 0
        hit = (truth.unsqueeze(-1) == labels[:, : self.k].unsqueeze(1)).any(-1) & valid  # [B, M]
        b = self.bucket[truth.clamp(min=0)][valid]  # [pairs]
        self.sums[0].index_add_(0, b, hit[valid].double())
        self.sums[1].index_add_(0, b, torch.ones_like(b, dtype=torch.float64))

    def compute(self) -> dict[str, float]:
        highs = [f"{e - 1}" for e in FREQ_EDGES[1:]] + ["inf"]
        return {
            f"recall@{self.k}/freq_{lo}-{hi}": float(self.sums[0, i] / self.sums[1, i])
            for i, (lo, hi) in enumerate(zip(FREQ_EDGES, highs)) if self.sums[1, i] > 0
        }


def evaluate(data_dir: str, meta, model, head, device, *, ks, batch_size, inv_prop, max_rows,
             train_counts: torch.Tensor) -> dict[str, float]:
    """P@k / nDCG@k / PSP@k / accuracy over the test split, each rank taking every world-th batch.

    Sharded heads run collectives inside `topk`, so every rank makes the same number of calls:
    ranks that run out of batches call it on an empty batch.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    metrics = RankingMetrics(ks=ks, inv_propensity=inv_prop)
    buckets = FrequencyBuckets(train_counts, max(ks))
    num_test = meta.num_test if max_rows is None else min(meta.num_test, max_rows)
    num_batches = math.ceil(num_test / batch_size)  # batch i goes to rank i % world
    rounds = math.ceil(num_batches / world)
    batches = xdata.iter_batches(data_dir, "test", batch_size, rank=rank, world=world)
    k = max(ks)
    model.eval()
    with torch.no_grad():
        for j in range(rounds):
            batch = next(batches, None) if j * world + rank < num_batches else None
            if batch is None:
                if not is_sharded(head):
                    break
                features = torch.zeros(0, head.in_dim, device=device)
                head.topk(features, k)
                continue
            batch = batch.to(device)
            _, labels = head.topk(model(batch), k)  # [B, k]
            metrics.update(labels.cpu(), batch.targets.cpu())
            buckets.update(labels.cpu(), batch.targets.cpu())
    model.train()
    metrics.load_state(all_reduce(metrics.state().to(device)).cpu())
    buckets.sums = all_reduce(buckets.sums.to(device)).cpu()
    return {**metrics.compute(), **buckets.compute()}


def collapse_metrics(data_dir: str, meta, model, head, device, batch_size: int) -> dict[str, float]:
    """NC1-NC3 on the training features (eval mode, float64 class sums all-reduced over ranks)."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    acc = NCAccumulator(meta.num_labels, head.in_dim)
    model.eval()
    with torch.no_grad():
        for batch in xdata.iter_batches(data_dir, "train", batch_size, rank=rank, world=world):
            batch = batch.to(device)
            acc.update(model(batch).double().cpu(), batch.targets.cpu())
    model.train()
    acc.load_state(all_reduce(acc.state().to(device)).cpu())
    weight = getattr(head, "weight", None)
    full = weight is not None and not is_sharded(head) and weight.shape == (meta.num_labels, head.in_dim)
    return {f"nc/{k}": v for k, v in acc.compute(weight.detach().double().cpu() if full else None).items()}


def train_loop(loop_config: dict) -> None:
    cfg = xconfig.from_dict(loop_config["config"])
    xengine.select_accelerator(cfg.use_gpu)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = torch.device(f"cuda:{ctx.get_local_rank()}" if cfg.use_gpu else "cpu")
    torch.manual_seed(cfg.train.seed)
    if not cfg.use_gpu:
        torch.set_num_threads(max(1, int(os.environ.get("XLC_THREADS_PER_WORKER", "1"))))

    # ---- model: backbone + head; sharded heads stay outside the engine
    meta = xdata.read_meta(cfg.data)
    backbone = build_backbone(
        cfg.backbone.name, num_features=meta.num_features, text=meta.text, hidden=cfg.backbone.hidden,
        dropout=cfg.backbone.dropout, **cfg.backbone.options,
    )
    extras = loop_config.get("head_extras") or {}
    head = build_head(cfg.head.name, meta.num_labels, backbone.out_dim, **cfg.head.options, **extras).to(device)
    sharded = is_sharded(head)
    model = Model(backbone, None if sharded else head)
    head_lr = cfg.train.head_lr or cfg.train.lr
    groups = [{"params": list(backbone.parameters()), "lr": cfg.train.lr}]
    if not sharded:
        groups.append({"params": list(head.parameters()), "lr": head_lr})
    ds_config = xengine.deepspeed_config(
        cfg.deepspeed, batch_size=cfg.train.batch_size, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
    engine = xengine.initialize(model, groups, ds_config, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    head_opt = torch.optim.AdamW(head.parameters(), lr=head_lr, weight_decay=cfg.train.weight_decay) if sharded else None
    head_parameters = sum(p.numel() for p in head.parameters())
    if sharded:  # every rank holds its own shard
        head_parameters = int(all_reduce(torch.tensor(head_parameters, device=device)))

    # ---- resume
    epoch, step, step_in_epoch, train_seconds, samples_seen = 0, 0, 0, 0.0, 0
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
                    ckpt.load_head_shard(directory, head, head_opt)
                epoch, step, step_in_epoch = state["epoch"], state["step"], state["step_in_epoch"]
                train_seconds, samples_seen = state["train_seconds"], state["samples_seen"]

    logger = RunLogger(loop_config["tracking_uri"], loop_config["run_id"]) if rank == 0 else None
    if logger is not None:
        logger.tags({"world_size": world, "head_parameters": head_parameters, "resumed_from_step": step})
    train_counts = torch.from_numpy(xdata.label_counts(cfg.data))
    inv_prop = inv_propensity(train_counts, meta.num_train, a=cfg.eval.psp_a, b=cfg.eval.psp_b)
    shard = ray.train.get_dataset_shard("train")

    def save_and_report(metrics: dict) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            engine.save_checkpoint(tmp, tag="engine", save_latest=False)
            written = []
            if sharded:
                written.append(ckpt.save_head_shard(directory, head, head_opt, rank))
            if rank == 0 and extras:
                written.append(ckpt.save_head_extras(directory, extras))
            if rank == 0:
                written.append(ckpt.write_state(directory, {
                    "epoch": epoch, "step": step, "step_in_epoch": step_in_epoch, "world_size": world,
                    "train_seconds": train_seconds, "samples_seen": samples_seen, "config": cfg.to_dict(),
                }))
            if (directory / "engine").exists():  # DeepSpeed writes model states on rank 0 only at ZeRO-0
                written += ckpt.files_under(directory / "engine")
            ckpt.write_manifest(directory, rank, sorted(set(written)))
            if dist.is_initialized():
                dist.barrier()
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def eval_metrics() -> dict:
        out = evaluate(
            cfg.data, meta, engine.module, head, device, ks=cfg.eval.k, batch_size=cfg.train.batch_size,
            inv_prop=inv_prop, max_rows=cfg.eval.max_rows, train_counts=train_counts,
        )
        if cfg.eval.collapse:
            out.update(collapse_metrics(cfg.data, meta, engine.module, head, device, cfg.train.batch_size))
        peak = all_reduce(torch.tensor(peak_memory_bytes(device), device=device), op=dist.ReduceOp.MAX)
        out.update(
            epoch=epoch, step=step, train_seconds=train_seconds, peak_memory_bytes=int(peak),
            samples_per_second=samples_seen / max(train_seconds, 1e-9), head_parameters=head_parameters,
        )
        return out

    # ---- train
    max_steps = cfg.train.max_steps or float("inf")
    metrics: dict[str, float] = {}
    while epoch < cfg.train.epochs and step < max_steps:
        engine.train()
        tic, running, n_running = time.perf_counter(), 0.0, 0
        batches = stream.epoch_batches(shard, cfg.train.batch_size, seed=cfg.train.seed + epoch, drop_last=sharded)
        for i, table in enumerate(batches):
            if i < step_in_epoch:  # resumed mid-epoch: these batches were trained before the stop
                continue
            batch = xdata.collate(table, meta.multi_label).to(device)
            features = engine(batch)  # [B, d]
            if sharded and world > 1:
                # The sharded loss is the global-batch mean, so this rank's feature gradient is already its
                # share of the global gradient; DeepSpeed then averages over ranks, so undo its 1/world.
                features.register_hook(lambda grad: grad * world)
            loss = head.loss(features, batch.targets)
            engine.backward(loss)
            engine.step()
            if head_opt is not None:
                head_opt.step()
                head_opt.zero_grad(set_to_none=True)
            step, step_in_epoch = step + 1, step_in_epoch + 1
            samples_seen += len(batch) * world
            running, n_running = running + loss.item(), n_running + 1
            if logger is not None and step % cfg.train.log_every_steps == 0:
                logger.metrics({"loss": running / n_running}, step)
                print(f"[{cfg.name}] epoch {epoch + 1}/{cfg.train.epochs} step {step} loss {running / n_running:.4f} "
                      f"({samples_seen / max(train_seconds + time.perf_counter() - tic, 1e-9):.0f} samples/s)",
                      flush=True)  # reaches the driver's console through Ray's log forwarding
                running, n_running = 0.0, 0
            if cfg.train.checkpoint_every_steps and step % cfg.train.checkpoint_every_steps == 0:
                train_seconds += time.perf_counter() - tic
                tic = time.perf_counter()
                save_and_report({"step": step, "epoch": epoch})
            if step >= max_steps:
                break
        train_seconds += time.perf_counter() - tic
        epoch, step_in_epoch = epoch + 1, 0

        metrics = eval_metrics()
        if logger is not None:
            logger.metrics({k: v for k, v in metrics.items() if k not in ("epoch", "step")}, step)
        save_and_report(metrics)

    if not metrics:  # resumed a run that had already finished: report its evaluation again
        ray.train.report(eval_metrics())
