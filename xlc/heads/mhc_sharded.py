"""Model-parallel Multi-Head Cascade: `mhc` with its label-embedding table split by contiguous group ranges."""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from xlc.errors import ConfigError
from xlc.heads._chunked import gathered_dot, row_dot, topk_lowest_index
from xlc.heads._dist import all_gather_rows, debug_check, debug_enabled, gather_shapes, local_rows
from xlc.heads._dist import merge_topk_across_ranks, sum_grad_over_ranks, sum_over_ranks
from xlc.heads._init import init_shard
from xlc.heads._targets import check_k, unique_targets
from xlc.heads.mhc import candidate_scores, check_cascade, group_hot, group_labels, is_positive, top_groups
from xlc.heads.mhc import split_single_label, training_candidates
from xlc.heads.sharded import LabelShard


class MHCShardedHead(nn.Module):
    """`mhc` (same loss, candidates and approximate top-k) with the table E split by contiguous group ranges.

    Replicated and small: group head W_g and projection W_p, run on the all-gathered global batch on every
    rank, so candidates (from g.detach()) and their gradients are identical everywhere: the training loop
    does not average a sharded head. Sharded: E[label_start:label_end], whole groups; each rank scores the
    candidates it owns and the loss shares are summed (one scalar all-reduce); dL/de is all-reduced (N x
    hidden). `topk` merges each rank's top-k; cross-rank ties go to the lower label range (mhc: the
    higher-scoring group). https://arxiv.org/abs/2412.10182
    """

    label_sharded = ("table",)  # state_dict entries whose dim 0 is [label_start, label_end)

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
        num_groups: int | None = None,
        group_size: int | None = None,
        hidden: int = 300,
        candidates: int = 10,
        multi_label: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        self.groups, self.candidates = check_cascade(num_labels, num_groups, group_size, hidden, candidates)
        self.num_groups, self.group_size = self.groups.sizes
        self.num_labels, self.in_dim, self.multi_label = num_labels, in_dim, multi_label
        by_group = LabelShard.of(self.num_groups, process_group)  # this rank's contiguous range of groups
        per = self.group_size
        self.shard = dataclasses.replace(
            by_group, num_labels=num_labels, start=min(by_group.start * per, num_labels),
            end=min(by_group.end * per, num_labels),
        )
        self.label_start, self.label_end = self.shard.start, self.shard.end
        gen = torch.Generator().manual_seed(seed)  # the replicated layers must start equal on every rank
        self.group_head = nn.Linear(in_dim, self.num_groups)
        self.proj = nn.Linear(in_dim, hidden)
        for layer in (self.group_head, self.proj):
            nn.init.xavier_uniform_(layer.weight, generator=gen)
            nn.init.uniform_(layer.bias, -1 / math.sqrt(in_dim), 1 / math.sqrt(in_dim), generator=gen)
        # U(+-1/sqrt(hidden)) drawn per block of global label ids (any world size gives the same table),
        # rescaled to mhc's xavier bound over its [C + 1, hidden] table
        self.table, _ = init_shard(self.shard, hidden, False, seed)  # [C_local, hidden]
        with torch.no_grad():
            self.table.mul_(math.sqrt(6 / (num_labels + 1 + hidden)) * math.sqrt(hidden))

    def _owned(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols) `[P]` of the candidate slots whose label this rank holds (padding belongs to nobody)."""
        return ((labels >= self.label_start) & (labels < self.label_end)).nonzero(as_tuple=True)

    def _scores_of(self, e: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor):
        """E[labels[rows, cols]] . e[rows] `[P]`, gathering only the owned rows of the table."""
        return gathered_dot(self.table, e, labels[rows, cols] - self.label_start, rows)  # [P]

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # replicated: W_g and W_p see the same rows on every rank, so their input gradient is already whole
        x, t = self.shard.gather("mhc_sharded.loss", features, targets, replicated=True)  # [N, d], [N] or [N, M]
        g = self.group_head(x)  # [N, G], the same on every rank
        e = sum_grad_over_ranks(self.proj(x), self.shard.group)  # [N, hidden]
        if not self.multi_label:
            return self._single_label_loss(g, e, t)
        t = unique_targets(t)  # [N, M]
        labels = training_candidates(g, t, self.group_size, self.num_labels, self.candidates)  # [N, Nc]
        self._check_same_candidates(labels)
        rows, cols = self._owned(labels)  # [P]
        z = self._scores_of(e, labels, rows, cols)  # [P]
        positive = is_positive(labels, t)[rows, cols].to(z.dtype)  # [P]
        share = F.binary_cross_entropy_with_logits(z, positive, reduction="sum")
        label_loss = sum_over_ranks(share, self.shard.group) / (labels < self.num_labels).sum()
        return label_loss + F.binary_cross_entropy_with_logits(g, group_hot(t, g, self.group_size))

    def _single_label_loss(self, g: torch.Tensor, e: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        labelled, group, local = split_single_label(targets, self.group_size, "mhc_sharded")  # [N] each
        y = targets.clamp(min=0)  # [N]; this rank holds whole groups, so y in its range <=> group(y) held
        rows = (labelled & (y >= self.label_start) & (y < self.label_end)).nonzero()[:, 0]  # [P]
        labels = group_labels(group[rows, None], self.group_size, self.num_labels)  # [P, per]
        padded = labels == self.num_labels
        z = row_dot(self.table, e[rows], (labels - self.label_start).masked_fill(padded, 0))  # [P, per]
        z = z.masked_fill(padded, -torch.inf)
        share = F.cross_entropy(z, local[rows], reduction="sum")
        group_loss = (F.cross_entropy(g, group, reduction="none") * labelled).sum()
        return (sum_over_ranks(share, self.shard.group) + group_loss) / targets.shape[0]

    def _check_same_candidates(self, labels: torch.Tensor) -> None:
        """XLC_DEBUG_DIST=1: every rank must have picked the same candidates (deterministic group head)."""
        if not debug_enabled() or self.shard.world == 1:
            return
        flat = labels.flatten()  # [N * Nc]; int64 overflow wraps the same way on every rank
        position = torch.arange(1, flat.numel() + 1, device=flat.device)
        mine = [flat.numel(), int(flat.sum()), int((flat * position).sum())]
        table = gather_shapes(mine, self.shard.group, labels.device)  # [W, 3]
        if not bool((table == table[0]).all()):
            raise ConfigError(
                f"mhc_sharded.loss: ranks chose different candidate labels (fingerprints {table.tolist()}); the "
                "group head must compute bit-identical logits on every rank (same device type, deterministic kernels)"
            )

    @torch.no_grad()
    def topk(self, features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`mhc`'s approximate top-k of this rank's rows: local top-k over the owned candidates, merged."""
        check_k(k, self.num_labels)
        shard = self.shard
        debug_check(
            "mhc_sharded.topk", shard.group, features=features, label_range=(shard.start, shard.end),
            num_labels=self.num_labels,
        )
        rows = gather_shapes([features.shape[0]], shard.group, features.device)[:, 0].tolist()
        x = all_gather_rows(features, shard.group, rows)  # [N, d]
        g = self.group_head(x)  # [N, G]
        group_scores, groups = top_groups(g, k, self.group_size, self.candidates, self.multi_label)  # [N, K']
        labels = group_labels(groups, self.group_size, self.num_labels)  # [N, K'*per]
        own_rows, own_cols = self._owned(labels)  # [P]
        z = torch.zeros(labels.shape, dtype=g.dtype, device=g.device)  # [N, K'*per]
        z[own_rows, own_cols] = self._scores_of(self.proj(x), labels, own_rows, own_cols)
        scores = candidate_scores(z, group_scores, labels, self.num_labels, self.multi_label)  # [N, K'*per]
        owned = torch.zeros_like(labels, dtype=torch.bool)
        owned[own_rows, own_cols] = True
        top, idx = topk_lowest_index(scores.masked_fill(~owned, -torch.inf), k)  # [N, k]
        top_labels = labels.gather(1, idx).masked_fill(top == -torch.inf, -1)  # [N, k]; -1 pads a few-label shard
        top, top_labels = merge_topk_across_ranks(top, top_labels, k, shard.group)
        mine = local_rows(rows, shard.rank)
        return top[mine], top_labels[mine]

    def extra_repr(self) -> str:
        return (
            f"labels [{self.label_start}, {self.label_end}) of {self.num_labels}, groups {self.num_groups} x "
            f"{self.group_size}, in_dim={self.in_dim}, candidates={self.candidates}, multi_label={self.multi_label}"
        )


__all__ = ["MHCShardedHead"]
