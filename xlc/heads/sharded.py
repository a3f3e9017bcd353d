"""Model-parallel linear heads: each rank owns a contiguous label range of `weight [C, d]` and `bias [C]`.

Both heads take each rank's own local batch, all-gather features (autograd-aware) and targets, score
the gathered batch against the rank's shard only, and combine shards through collectives, so only
features and per-row statistics travel (never weights, never B x C logits). `loss` returns the same
value on every rank; every rank of the group must call `loss` and `topk` together. `LabelShard` (a
rank's label range, its batch gather and its cross-rank top-k) is shared with `mhc_sharded`.

Under data parallelism the backbone gradient on each rank is that of the global-mean loss restricted
to the rank's rows; a DP all-reduce that *averages* therefore scales it by 1/world (Partial FC
multiplies the gathered gradient by world size for that reason).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from xlc.errors import ConfigError
from xlc.heads._chunked import chunked_bce, chunked_cross_entropy, chunked_topk, compute_dtypes
from xlc.heads._dist import (
    all_gather_rows,
    all_gather_targets,
    debug_check,
    gather_shapes,
    local_rows,
    merge_topk_across_ranks,
    resolve_group,
    shard_range,
)
from xlc.heads._init import init_shard
from xlc.heads._margin import Margin
from xlc.heads._targets import LABEL_REDUCTIONS, PAL_REDUCTIONS, check_choice, check_k, validate_targets


@dataclass(frozen=True)
class LabelShard:
    """This rank's place in the head: `group` is None on a single process (no collectives)."""

    group: object
    rank: int
    world: int
    num_labels: int
    start: int
    end: int

    @classmethod
    def of(cls, num_labels: int, process_group=None) -> "LabelShard":
        group, rank, world = resolve_group(process_group)
        return cls(group, rank, world, num_labels, *shard_range(num_labels, rank, world))

    def __deepcopy__(self, memo) -> "LabelShard":
        return self  # immutable, and a process group cannot be copied (copy.deepcopy(head) keeps working)

    def gather(
        self, op: str, features: torch.Tensor, targets: torch.Tensor, *, replicated: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [N, d] with autograd back to each rank's rows, targets [N] or [N, M]) of the global batch.

        Targets are validated after the gather, so a bad label raises on every rank (naming its global row).
        `replicated`: the caller's graph on the gathered features is identical on every rank, so their
        gradient is not summed over ranks (see `_dist.all_gather_rows`).
        """
        targets = targets.to(features.device)
        debug_check(
            op, self.group, features=features, targets=targets, label_range=(self.start, self.end),
            num_labels=self.num_labels,
        )
        width = targets.shape[1] if targets.dim() == 2 else 0
        shapes = gather_shapes([features.shape[0], width], self.group, features.device)  # [W, 2]
        rows, width = shapes[:, 0].tolist(), int(shapes[:, 1].max())
        x = all_gather_rows(features, self.group, rows, replicated=replicated)  # [N, d]
        t = all_gather_targets(targets, self.group, rows, width)  # [N] or [N, M]
        validate_targets(t, self.num_labels, x.shape[0])
        return x, t

    @torch.no_grad()
    def topk(self, features, weight, bias, k: int, chunk: int | None, logit_fn=None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k of this rank's rows over every shard: gather rows, local top-k (by `logit_fn`, default linear)
        with global ids, merge."""
        check_k(k, self.num_labels)
        debug_check(
            "topk", self.group, features=features.detach(), label_range=(self.start, self.end),
            num_labels=self.num_labels,
        )
        rows = gather_shapes([features.shape[0]], self.group, features.device)[:, 0].tolist()
        x = all_gather_rows(features.detach(), self.group, rows)  # [N, d]
        n, own = x.shape[0], min(k, weight.shape[0])
        scores = torch.full((n, k), -torch.inf, dtype=compute_dtypes(x, weight)[1], device=x.device)  # [N, k]
        labels = torch.full((n, k), -1, dtype=torch.long, device=x.device)  # [N, k]; -1/-inf pad a small shard
        if own > 0 and n > 0:
            scores[:, :own], labels[:, :own] = chunked_topk(x, weight, bias, own, chunk=chunk, label_offset=self.start,
                                                            logit_fn=logit_fn)
        scores, labels = merge_topk_across_ranks(scores, labels, k, self.group)
        mine = local_rows(rows, self.rank)
        return scores[mine], labels[mine]


def init_sharded_linear(
    module: nn.Module, num_labels: int, in_dim: int, process_group, bias: bool, seed: int, bias_value: float = 0.0
) -> None:
    """Give `module` its `shard`, `label_start`/`label_end` and its rows of `weight` and `bias`."""
    module.num_labels, module.in_dim = num_labels, in_dim
    module.shard = LabelShard.of(num_labels, process_group)
    module.label_start, module.label_end = module.shard.start, module.shard.end
    module.weight, module.bias = init_shard(module.shard, in_dim, bias, seed, bias_value)


class ShardedSoftmaxHead(nn.Module):
    """Softmax CE (PAL for multi-label) over all labels, the weight split by label range across ranks.

    Exact (Megatron vocab-parallel CE): the normaliser comes from all-reducing the row max (MAX) and
    sum-exp and target logits (SUM) of every shard. `sample_rate < 1` (Partial FC, An et al. 2021,
    arXiv 2203.15565), in training mode only: each rank keeps every label of its range present in the
    global batch plus uniform negatives up to ceil(sample_rate * C_local); the softmax runs over the
    union of the kept labels. `topk` is exact over all shards (ties go to the lower label).
    `margin: arcface | cosface` (with `bias: false`): the margin softmax over normalised weights of
    `xlc.heads._margin`, single-label; `topk` then ranks by cosine.
    """

    label_sharded = ("weight", "bias")  # state_dict entries whose dim 0 is [label_start, label_end)

    @property
    def process_group(self):
        """The group the label range is split over (None on a single process)."""
        return self.shard.group

    def __init__(
        self,
        num_labels: int,
        in_dim: int,
        *,
        process_group=None,
        sample_rate: float = 1.0,
        bias: bool = True,
        chunk: int | None = None,
        multi_label_loss: str = "pal_mean",
        seed: int = 0,
        margin: str = "none",
        margin_m: float | None = None,
        margin_scale: float = 64.0,
    ):
        super().__init__()
        check_choice("multi_label_loss", multi_label_loss, PAL_REDUCTIONS)
        self.margin = Margin.of(margin, margin_m, margin_scale, bias)
        if not 0 < sample_rate <= 1:
            raise ConfigError(f"head.sample_rate={sample_rate}: expected 0 < sample_rate <= 1 (1 = exact softmax)")
        init_sharded_linear(self, num_labels, in_dim, process_group, bias, seed)
        self.sample_rate, self.chunk, self.multi_label_loss, self.seed = sample_rate, chunk, multi_label_loss, seed
        self.sampled_labels: torch.Tensor | None = None  # global ids kept by the last sampled `loss`
        self._generator: torch.Generator | None = None

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x, t = self.shard.gather("sharded_softmax.loss", features, targets)  # [N, d], [N] or [N, M]
        weight, bias = self.weight, self.bias
        if self.training and self.sample_rate < 1:
            index = self._sample(t)  # [S] local rows kept, ascending
            weight, bias = weight[index], None if bias is None else bias[index]  # [S, d], [S]
            t = self._remap(t, index)
        if self.margin is not None:
            return self.margin.loss(x, weight, t, chunk=self.chunk, label_offset=self.label_start,
                                    group=self.shard.group).mean()
        per_row = chunked_cross_entropy(
            x, weight, bias, t, chunk=self.chunk, label_offset=self.label_start, group=self.shard.group,
            reduction=self.multi_label_loss,
        )  # [N]
        return per_row.mean()

    def _sample(self, targets: torch.Tensor) -> torch.Tensor:
        """Local rows of every positive in this range plus uniform negatives, sorted; at least ceil(rate * C_local)."""
        local_size = self.label_end - self.label_start
        t = targets[(targets >= self.label_start) & (targets < self.label_end)] - self.label_start  # [P] local ids
        if self._generator is None or self._generator.device != t.device:
            self._generator = torch.Generator(t.device).manual_seed(self.seed * 1_000_003 + self.label_start)
        score = torch.rand(local_size, generator=self._generator, device=t.device)  # [C_local] in [0, 1)
        score[t] = 2.0  # positives first
        keep = max(math.ceil(self.sample_rate * local_size), int((score == 2.0).sum()))
        index = score.topk(keep).indices.sort().values  # [S]
        self.sampled_labels = index + self.label_start
        return index

    def _remap(self, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Targets in this range -> label_start + position in `index`; other ranks' ids lie outside [start, start+S)."""
        inside = (targets >= self.label_start) & (targets < self.label_end)
        pos = torch.searchsorted(index, (targets - self.label_start).clamp(min=0))  # same shape as targets
        return torch.where(inside, pos + self.label_start, targets)

    def topk(self, features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        logit_fn = None if self.margin is None else self.margin.logit_fn
        return self.shard.topk(features, self.weight, self.bias, k, self.chunk, logit_fn)

    def extra_repr(self) -> str:
        return (
            f"labels [{self.label_start}, {self.label_end}) of {self.num_labels}, in_dim={self.in_dim}, "
            f"sample_rate={self.sample_rate}, margin={self.margin}"
        )


class ShardedBCEHead(nn.Module):
    """One-vs-all BCE over all labels (Renee-style, exact, no sampling), the weight split by label range.

    Per row: sum_j BCEWithLogits(z_j, y_j) over every label of every shard (`label_reduction="mean"`
    divides by num_labels), all-reduced across shards; loss = mean over the global batch, the same
    convention as the single-process `bce` head. Renee: Jain et al. 2023, arXiv 2305.00920.
    `topk` is exact over all shards (ties go to the lower label).
    """

    label_sharded = ("weight", "bias")  # state_dict entries whose dim 0 is [label_start, label_end)

    @property
    def process_group(self):
        """The group the label range is split over (None on a single process)."""
        return self.shard.group

    def __init__(
        self,
        num_labels: int,
        in_dim: int,
        *,
        process_group=None,
        bias: bool = True,
        chunk: int | None = None,
        label_reduction: str = "sum",
        seed: int = 0,
    ):
        super().__init__()
        check_choice("label_reduction", label_reduction, LABEL_REDUCTIONS)
        # b = -log C as in the single-process `bce` head: initial sigmoids near the label prior 1/C
        init_sharded_linear(self, num_labels, in_dim, process_group, bias, seed, bias_value=-math.log(num_labels))
        self.chunk, self.label_reduction = chunk, label_reduction

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x, t = self.shard.gather("sharded_bce.loss", features, targets)  # [N, d], [N] or [N, M]
        per_row = chunked_bce(
            x, self.weight, self.bias, t, chunk=self.chunk, label_offset=self.label_start, group=self.shard.group,
            label_reduction=self.label_reduction,
        )  # [N]
        return per_row.mean()

    def topk(self, features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.shard.topk(features, self.weight, self.bias, k, self.chunk)

    def extra_repr(self) -> str:
        return f"labels [{self.label_start}, {self.label_end}) of {self.num_labels}, in_dim={self.in_dim}"
