"""Multi-Head Cascade (MHE, Liang et al., TPAMI 2025): group head, then label embeddings of candidate groups."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xlc.errors import ConfigError, DataError
from xlc.heads._chunked import row_dot, topk_lowest_index
from xlc.heads._targets import check_k, unique_targets, validate_targets
from xlc.heads.codec import MixedRadix, contiguous_groups


class MHCHead(nn.Module):
    """Group logits g = W_g F over G contiguous label groups; projection e = W_p F; table E `[C + 1, hidden]`.

    Multi-label: loss = BCE(E[c].e, 1[c in y]) over the candidates + BCE(g, group multi-hot), both element
    means; candidates = labels of the top-K groups of sigmoid(g).detach() + true-group multi-hot, then any
    true label still missing overwrites a negative slot. Single-label (`multi_label=False`): CE of
    E[group(y)].e at y's position + CE(g, group(y)). Only candidate rows of E are gathered (row C pads the
    ragged last group). `topk` is approximate: candidates come from the top-K groups only, scored
    sigmoid(E[c].e) * sigmoid(g[group(c)]) (single-label: softmax(g) * softmax within the group).
    https://arxiv.org/abs/2412.10182
    """

    def __init__(
        self,
        num_labels: int,
        in_dim: int,
        num_groups: int | None = None,
        group_size: int | None = None,
        hidden: int = 300,
        candidates: int = 10,
        multi_label: bool = True,
    ):
        super().__init__()
        self.groups, self.candidates = check_cascade(num_labels, num_groups, group_size, hidden, candidates)
        self.num_groups, self.group_size = self.groups.sizes
        self.num_labels, self.in_dim, self.multi_label = num_labels, in_dim, multi_label
        self.group_head = nn.Linear(in_dim, self.num_groups)
        self.proj = nn.Linear(in_dim, hidden)
        self.table = nn.Embedding(num_labels + 1, hidden)  # row num_labels: padding of the ragged last group
        for weight in (self.group_head.weight, self.proj.weight, self.table.weight):
            nn.init.xavier_uniform_(weight)

    def group_labels(self, groups: torch.Tensor) -> torch.Tensor:
        return group_labels(groups, self.group_size, self.num_labels)

    def candidate_logits(self, e: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """E[labels] . e `[B, N]`, without forming the `[B, N, hidden]` gather (`row_dot`)."""
        return row_dot(self.table.weight, e, labels)  # [B, N]

    def training_candidates(self, group_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return training_candidates(group_logits, targets, self.group_size, self.num_labels, self.candidates)

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        validate_targets(targets, self.num_labels, features.shape[0])
        g = self.group_head(features)  # [B, G]
        e = self.proj(features)  # [B, hidden]
        if not self.multi_label:
            return self._single_label_loss(g, e, targets)
        t = unique_targets(targets)  # [B, M]
        labels = self.training_candidates(g, t)  # [B, N]
        real = (labels < self.num_labels).to(g.dtype)  # [B, N] padded slots carry no loss
        target = is_positive(labels, t).to(g.dtype)  # [B, N]
        logits = self.candidate_logits(e, labels)  # [B, N]
        label_loss = F.binary_cross_entropy_with_logits(logits, target, weight=real, reduction="sum") / real.sum()
        return label_loss + F.binary_cross_entropy_with_logits(g, group_hot(t, g, self.group_size))

    def _single_label_loss(self, g: torch.Tensor, e: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        labelled, group, local = split_single_label(targets, self.group_size, "mhc")  # [B] each
        labels = self.group_labels(group[:, None])  # [B, per]
        logits = self.candidate_logits(e, labels).masked_fill(labels == self.num_labels, -torch.inf)  # [B, per]
        per_row = F.cross_entropy(logits, local, reduction="none") + F.cross_entropy(g, group, reduction="none")
        return (per_row * labelled).sum() / targets.shape[0]

    @torch.no_grad()
    def topk(self, features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Approximate top-k: only labels of the top-K groups (more if k needs them) are scored; no teacher forcing."""
        check_k(k, self.num_labels)
        g = self.group_head(features)  # [B, G]
        group_scores, groups = top_groups(g, k, self.group_size, self.candidates, self.multi_label)  # [B, K']
        labels = self.group_labels(groups)  # [B, K'*per]
        logits = self.candidate_logits(self.proj(features), labels)  # [B, K'*per]
        scores = candidate_scores(logits, group_scores, labels, self.num_labels, self.multi_label)  # [B, K'*per]
        top, idx = topk_lowest_index(scores, k)
        return top, labels.gather(1, idx)


def check_cascade(
    num_labels: int, num_groups: int | None, group_size: int | None, hidden: int, candidates: int
) -> tuple[MixedRadix, int]:
    """Validated options -> (contiguous label groups, candidate groups per sample capped at the group count)."""
    groups = contiguous_groups(num_labels, num_groups=num_groups, group_size=group_size)
    if not isinstance(candidates, int) or candidates < 1:
        raise ConfigError(f"candidates={candidates!r}: expected an integer >= 1 (groups kept per sample)")
    if not isinstance(hidden, int) or hidden < 1:
        raise ConfigError(f"hidden={hidden!r}: expected an integer >= 1")
    return groups, min(candidates, groups.sizes[0])


def split_single_label(targets: torch.Tensor, group_size: int, head: str) -> tuple[torch.Tensor, ...]:
    """Single-label targets `[B]` -> (labelled, group, position in the group) `[B]`; a -1 row is unlabelled
    (it counts in the mean with zero loss) and gets group 0."""
    if targets.dim() != 1:
        shape = list(targets.shape)
        raise DataError(f"targets: head {head} with multi_label=false expects single-label [B], got {shape}")
    y = targets.clamp(min=0)
    return targets >= 0, y // group_size, y % group_size

def group_labels(groups: torch.Tensor, group_size: int, num_labels: int) -> torch.Tensor:
    """Groups `[B, K]` -> their labels `[B, K * group_size]`, padded slots = num_labels."""
    labels = (groups[:, :, None] * group_size + torch.arange(group_size, device=groups.device)).flatten(1)
    return labels.clamp(max=num_labels)  # [B, K*per]


def training_candidates(
    group_logits: torch.Tensor, targets: torch.Tensor, group_size: int, num_labels: int, candidates: int
) -> torch.Tensor:
    """Teacher-forced candidate labels `[B, K * group_size]` for positives `targets [B, M]` (-1 padded, unique)."""
    positive = targets >= 0  # [B, M]
    top = (torch.sigmoid(group_logits.detach()) + group_hot(targets, group_logits, group_size)).topk(candidates)
    labels = group_labels(top.indices, group_size, num_labels)  # [B, N]
    covered = ((targets // group_size)[:, :, None] == top.indices[:, None, :]).any(2)  # [B, M]
    missing = positive & ~covered  # [B, M] true labels whose group was not selected (> K true groups)
    if not missing.any():
        return labels
    # the j-th missing positive of a row overwrites the j-th non-positive slot counted from the end
    # (the weakest group's, padding first); with more positives than slots the excess is dropped
    n = labels.shape[1]
    free = ~is_positive(labels, targets)  # [B, N]
    rank_free = torch.where(free, free.flip(1).cumsum(1).flip(1) - 1, n + 1)  # [B, N]; not free -> sink n + 1
    slot_of_rank = torch.full((labels.shape[0], n + 2), n, device=labels.device)  # [B, N + 2]; n = no slot
    slot_of_rank.scatter_(1, rank_free, torch.arange(n, device=labels.device).expand_as(labels).contiguous())
    rank_missing = torch.where(missing, missing.cumsum(1) - 1, n).clamp(max=n)  # [B, M]
    slot = torch.where(missing, slot_of_rank.gather(1, rank_missing), n)  # [B, M]; n = dropped
    out = torch.cat([labels, labels[:, :1]], dim=1).scatter_(1, slot, targets)  # [B, N + 1]
    return out[:, :n]


def group_hot(targets: torch.Tensor, like: torch.Tensor, group_size: int) -> torch.Tensor:
    """Multi-hot `[B, G]` (dtype of `like`) of the groups of `targets [B, M]` (-1 padded)."""
    rows, cols = (targets >= 0).nonzero(as_tuple=True)
    hot = torch.zeros_like(like)  # [B, G]
    hot[rows, targets[rows, cols] // group_size] = 1.0
    return hot


def is_positive(labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """labels `[B, N]` in the row's targets `[B, M]`, by binary search in the sorted targets."""
    ordered = targets.sort(dim=1).values  # [B, M]
    idx = torch.searchsorted(ordered, labels.contiguous()).clamp(max=ordered.shape[1] - 1)  # [B, N]
    return ordered.gather(1, idx) == labels


def top_groups(
    g: torch.Tensor, k: int, group_size: int, candidates: int, multi_label: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, ids) `[B, K']` of the groups `topk` scores: K' = max(K, ceil(k / per) + 1), at most G."""
    # K' groups hold >= (K' - 1) * per real labels (only the last group is ragged), so >= k of them
    num = min(g.shape[1], max(candidates, -(-k // group_size) + 1))
    return (torch.sigmoid(g) if multi_label else g.softmax(1)).topk(num)  # [B, K']


def candidate_scores(
    logits: torch.Tensor, group_scores: torch.Tensor, labels: torch.Tensor, num_labels: int, multi_label: bool
) -> torch.Tensor:
    """`topk` scores `[B, K' * per]`: sigmoid(z) * sigmoid(g) (single-label: softmax in the group * softmax(g)).

    Padded slots score -inf.
    """
    num = group_scores.shape[1]
    per = labels.shape[1] // num
    padded = labels == num_labels  # [B, K'*per]
    if multi_label:
        scores = torch.sigmoid(logits) * group_scores.repeat_interleave(per, dim=1)  # [B, K'*per]
    else:
        local = logits.masked_fill(padded, -torch.inf).view(-1, num, per).softmax(2)  # [B, K', per]
        scores = (local * group_scores[:, :, None]).flatten(1)  # [B, K'*per]
    return scores.masked_fill(padded, -torch.inf)  # never return a padded slot


__all__ = [
    "MHCHead",
    "candidate_scores",
    "check_cascade",
    "group_hot",
    "group_labels",
    "is_positive",
    "split_single_label",
    "top_groups",
    "training_candidates",
]
