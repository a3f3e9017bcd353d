"""Evaluation, free of Ray: ranking metrics over a split, recall by label frequency, neural-collapse metrics.

Each rank scores every world-th batch and the metric sums are all-reduced, so the result equals a single
process scoring every row. Used by the worker loop and by `xlc eval` (one process).
"""

from __future__ import annotations

import math
import resource

import torch
import torch.distributed as dist

from xlc import data as xdata
from xlc.data.schema import DatasetMeta
from xlc.eval.collapse import NCAccumulator
from xlc.eval.metrics import RankingMetrics
from xlc.heads import ShardedHead
from xlc.heads.scored import scored_view
from xlc.progress import progress

FREQ_EDGES = (0, 1, 2, 5, 10, 50, 100, 1000)  # training-count buckets: 0, 1, 2-4, 5-9, ..., 1000+


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def all_reduce(values: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce of metric sums over the training ranks (identity on one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values, op=op)
    return values


def barrier() -> None:
    """Wait for every training rank (nothing on one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


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


def evaluate(data_dir: str, meta: DatasetMeta, model, head, device, *, ks, batch_size, inv_prop, max_rows,
             train_counts: torch.Tensor) -> dict[str, float]:
    """P@k / nDCG@k / PSP@k / accuracy and recall by label frequency over the test split (its first
    `max_rows` rows when given). A sharded head runs collectives inside `topk`, so every rank makes the same
    number of calls: a rank that has run out of batches passes an empty one (the `ShardedHead` contract)."""
    rank, world = rank_and_world()
    metrics = RankingMetrics(ks=ks, inv_propensity=inv_prop)
    buckets = FrequencyBuckets(train_counts, max(ks))
    num_test = meta.num_test if max_rows is None else min(meta.num_test, max_rows)
    num_batches = math.ceil(num_test / batch_size)  # batch i goes to rank i % world
    rounds = math.ceil(num_batches / world)
    batches = xdata.iter_batches(data_dir, "test", batch_size, rank=rank, world=world)
    sharded, k = isinstance(head, ShardedHead), max(ks)
    model.eval()
    with torch.no_grad(), progress(range(rounds), desc=f"eval {num_test} test rows", unit="batch") as bar:
        for j in bar:
            batch = next(batches, None) if j * world + rank < num_batches else None
            if batch is None:
                if not sharded:
                    break
                head.topk(torch.zeros(0, head.in_dim, device=device), k)
                continue
            batch = batch.to(device)
            _, labels = head.topk(model(batch), k) if sharded else model(batch, k=k)  # [B, k]
            metrics.update(labels.cpu(), batch.targets.cpu())
            buckets.update(labels.cpu(), batch.targets.cpu())
    model.train()
    metrics.load_state(all_reduce(metrics.state().to(device)).cpu())
    buckets.sums = all_reduce(buckets.sums.to(device)).cpu()
    return {**metrics.compute(), **buckets.compute()}


def collapse_metrics(data_dir: str, meta: DatasetMeta, model, head, classifier: tuple | None, device,
                     batch_size: int) -> dict[str, float]:
    """NC1-NC4 on the training features that `head`'s classifier scores (`xlc.heads.scored`; eval mode,
    float64 class sums all-reduced over ranks), with its (rows, bias) from `classifier_rows` when it has them."""
    rank, world = rank_and_world()
    acc = None
    model.eval()
    batches = xdata.iter_batches(data_dir, "train", batch_size, rank=rank, world=world)
    mine = math.ceil(math.ceil(meta.num_train / batch_size) / world)  # batch i goes to rank i % world
    with torch.no_grad(), progress(batches, desc="collapse metrics", total=mine, unit="batch") as bar:
        for batch in bar:
            batch = batch.to(device)
            h = scored_view(head, model(batch)).double().cpu()  # [B, d']
            acc = acc or NCAccumulator(meta.num_labels, h.shape[1])
            acc.update(h, batch.targets.cpu())
    model.train()
    acc.load_state(all_reduce(acc.state().to(device)).cpu())
    weight, bias = classifier or (None, None)
    return {f"nc/{k}": v for k, v in acc.compute(weight, bias).items()}
