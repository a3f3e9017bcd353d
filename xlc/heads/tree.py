"""Label-tree head (PECOS XR-Linear style): per-level one-vs-all scorers on the backbone features, beam search."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xlc.errors import ConfigError
from xlc.heads._targets import unique_targets, validate_targets
from xlc.heads.training_split import TrainingSplit

NEGATIVES = ("tfn", "man", "tfn+man")
# Rows of candidate weights gathered at once in `topk` ([rows, K, d] floats), about 64 MiB in fp32.
TOPK_GATHER_FLOATS = 2**24


@dataclass(frozen=True)
class LabelHierarchy:
    """A label tree with every leaf at the same depth.

    `parents[l]` (LongTensor [n_l]) maps each cluster at level l to its parent at level l-1; `parents[0]` is all
    zeros (the root). `label_to_leaf` (LongTensor [num_labels]) maps each label to its last-level cluster.
    Every cluster has at least one child, so a beam of width w always reaches min(w, #nodes) real nodes.
    """

    parents: list[torch.Tensor]
    label_to_leaf: torch.Tensor


def tree_depth(num_labels: int, branching: int, leaf_size: int) -> int:
    """Cluster levels so that balanced splits leave at most about `leaf_size` labels per leaf (at least 1)."""
    depth = 1
    while branching**depth * leaf_size < num_labels:
        depth += 1
    return depth


def recursive_hierarchy(num_labels: int, depth: int, branching: int,
                        split: Callable[[torch.Tensor, int], list[torch.Tensor]]) -> LabelHierarchy:
    """Split label sets level by level: `split(label_ids, k)` returns k non-empty disjoint parts."""
    groups = [torch.arange(num_labels)]
    parents = []
    for _ in range(depth):
        children, up = [], []
        for p, labels in enumerate(groups):
            parts = split(labels, min(branching, len(labels)))
            children += parts
            up += [p] * len(parts)
        groups = children
        parents.append(torch.tensor(up, dtype=torch.long))
    label_to_leaf = torch.empty(num_labels, dtype=torch.long)
    for leaf, labels in enumerate(groups):
        label_to_leaf[labels] = leaf
    return LabelHierarchy(parents, label_to_leaf)


def contiguous_hierarchy(num_labels: int, branching: int = 16, leaf_size: int = 100) -> LabelHierarchy:
    """Balanced tree over contiguous label-id blocks (no clustering); the default when none is given."""
    depth = tree_depth(num_labels, branching, leaf_size)
    return recursive_hierarchy(num_labels, depth, branching, lambda ids, k: list(torch.tensor_split(ids, k)))


def clustered_hierarchy(embeddings: torch.Tensor, branching: int, leaf_size: int, seed: int,
                        cluster: Callable[[torch.Tensor, int, int], torch.Tensor]) -> LabelHierarchy:
    """Split label embeddings [L, D] recursively into `branching` clusters per node, to depth
    `tree_depth(L, branching, leaf_size)`; `cluster(points, k, seed)` -> ids [n] in [0, k), every part non-empty."""
    if branching < 2 or leaf_size < 1:
        raise ConfigError(f"branching={branching}, leaf_size={leaf_size}: expected branching >= 2, leaf_size >= 1")
    num_labels = len(embeddings)
    calls = iter(range(1 << 62))  # a distinct seed per node keeps the result independent of threading

    def split(ids: torch.Tensor, k: int) -> list[torch.Tensor]:
        assign = cluster(embeddings[ids], k, seed * 1_000_003 + next(calls))  # [n]
        return [ids[assign == c] for c in range(k)]

    return recursive_hierarchy(num_labels, tree_depth(num_labels, branching, leaf_size), branching, split)


def _children_table(parent: torch.Tensor, num_parents: int) -> torch.Tensor:
    """[num_parents, max_fanout] child ids of each parent, padded with -1."""
    order = torch.argsort(parent, stable=True)  # children grouped by parent
    counts = torch.bincount(parent, minlength=num_parents)  # [P]
    start = torch.cumsum(counts, 0) - counts  # [P]
    pos = torch.arange(len(parent)) - start[parent[order]]  # rank of each child within its parent
    table = torch.full((num_parents, int(counts.max())), -1, dtype=torch.long)
    table[parent[order], pos] = order
    return table


class TreeHead(nn.Module):
    """Label tree with one-vs-all linear scorers per level: P(label) = prod over its path of sigmoid(w_n.h + b_n).

    Loss: per level, mean BCE over the candidates = true nodes, the children of the true parents (teacher-forced
    negatives, TFN) and the children of the model's own beam (matcher-aware negatives, MAN), summed over levels
    (PECOS XR-Linear, https://arxiv.org/abs/2010.05878). `topk` is beam search of width max(beam, k): exact when
    the beam holds every node of each level, approximate otherwise. Not sharded; d * (L + #clusters) weights.
    """

    def __init__(self, num_labels: int, in_dim: int, *, hierarchy: LabelHierarchy | dict | None = None,
                 beam: int = 10, negatives: str = "tfn+man", branching: int = 16, leaf_size: int = 100):
        super().__init__()
        if isinstance(hierarchy, dict):  # as returned by `fit_inputs` and stored with checkpoints
            hierarchy = LabelHierarchy(**hierarchy)
        if negatives not in NEGATIVES:
            raise ConfigError(f"head.negatives={negatives!r}: expected one of {', '.join(NEGATIVES)}")
        if beam < 1:
            raise ConfigError(f"head.beam={beam}: expected a positive integer")
        with torch.device("cpu"):  # index bookkeeping, also when the weights are built on the meta device
            if hierarchy is None:
                hierarchy = contiguous_hierarchy(num_labels, branching, leaf_size)
            ups = _validate(hierarchy, num_labels)
            children = [None] + [_children_table(ups[t], len(ups[t - 1])) for t in range(1, len(ups))]
        self.num_labels, self.in_dim, self.beam, self.negatives = num_labels, in_dim, beam, negatives
        sizes = [len(u) for u in ups]  # nodes per level; the last level is the labels
        self.weights = nn.ParameterList(nn.Parameter(torch.randn(n, in_dim) * in_dim**-0.5 * 0.1) for n in sizes)
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(n)) for n in sizes)
        for t, up in enumerate(ups):  # buffers, so the tree travels in the state_dict
            self.register_buffer(f"up_{t}", up)
            if t:
                self.register_buffer(f"children_{t}", children[t])

    @classmethod
    def fit_inputs(cls, training: TrainingSplit, options: dict) -> dict:
        """The PECOS tree: label embeddings (PIFA) clustered recursively (balanced spherical k-means)."""
        if options.get("hierarchy") is not None:
            return {}
        h = clustered_hierarchy(training.label_embeddings(), options.get("branching", 16),
                                options.get("leaf_size", 100), training.seed, training.cluster)
        return {"hierarchy": {"parents": h.parents, "label_to_leaf": h.label_to_leaf}}

    @property
    def depth(self) -> int:
        return len(self.weights)

    def _up(self, t: int) -> torch.Tensor:
        return getattr(self, f"up_{t}")

    def _children(self, t: int) -> torch.Tensor:
        return getattr(self, f"children_{t}")

    def _score(self, h: torch.Tensor, t: int, nodes: torch.Tensor) -> torch.Tensor:
        """Logits [B, K] of level-t nodes [B, K] (entries >= 0)."""
        w = self.weights[t][nodes]  # [B, K, d]
        return torch.einsum("bkd,bd->bk", w, h.to(w.dtype)) + self.biases[t][nodes]  # [B, K]

    def _expand(self, t: int, parents: torch.Tensor) -> torch.Tensor:
        """Children at level t of level-(t-1) nodes [B, P] (-1 = none) -> [B, P * fanout], -1 padded."""
        kids = self._children(t)[parents.clamp(min=0)]  # [B, P, f]
        return kids.masked_fill(parents[..., None] < 0, -1).flatten(1)

    def _ancestors(self, targets: torch.Tensor) -> list[torch.Tensor]:
        """Per level, the true-path nodes [B, M] of each row (-1 padded)."""
        nodes = [unique_targets(targets)]  # [B, M] labels
        for t in range(self.depth - 1, 0, -1):
            x = nodes[0]
            nodes.insert(0, torch.where(x >= 0, self._up(t)[x.clamp(min=0)], x))
        return nodes

    @torch.no_grad()
    def _beam(self, h: torch.Tensor, width: int, last: int, levels: int | None = None):
        """Beam search over the first `levels` levels (default all); returns the kept nodes per level
        ([B, <=width], -1 = none; `last` kept at the label level) and the log path scores of the final ones."""
        b = h.shape[0]
        logp = F.logsigmoid(h @ self.weights[0].T.to(h.dtype) + self.biases[0])  # [B, n_0]
        score, nodes = logp.topk(min(width, logp.shape[1]), dim=1)  # [B, w]
        kept = [nodes]
        for t in range(1, levels or self.depth):
            cand = self._expand(t, nodes)  # [B, K]
            valid = cand >= 0
            total = torch.full(cand.shape, -torch.inf, dtype=score.dtype, device=h.device)  # [B, K]
            rows = max(1, TOPK_GATHER_FLOATS // max(cand.shape[1] * self.in_dim, 1))
            for lo in range(0, b, rows):  # bound the [rows, K, d] gather
                s = F.logsigmoid(self._score(h[lo : lo + rows], t, cand[lo : lo + rows].clamp(min=0)))
                total[lo : lo + rows] = score[lo : lo + rows].repeat_interleave(cand.shape[1] // score.shape[1], 1) + s
            total = total.masked_fill(~valid, -torch.inf)
            keep = min(last if t == self.depth - 1 else width, cand.shape[1])
            score, idx = total.topk(keep, dim=1)  # [B, keep]
            nodes = cand.gather(1, idx).masked_fill(score == -torch.inf, -1)
            kept.append(nodes)
        return kept, score

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        validate_targets(targets, self.num_labels, features.shape[0])
        truth = self._ancestors(targets)  # per level [B, M]
        man = "man" in self.negatives
        beams = self._beam(features.detach(), self.beam, self.beam, self.depth - 1)[0] if man else None
        b = features.shape[0]
        total = features.new_zeros(())
        for t in range(self.depth):
            if t == 0:
                cand = torch.arange(len(self.biases[0]), device=features.device).expand(b, -1)  # [B, n_0]
            else:
                parents = [truth[t - 1]] if "tfn" in self.negatives else []
                parents += [beams[t - 1]] if beams is not None else []
                cand = torch.cat([truth[t], self._expand(t, torch.cat(parents, 1))], 1)  # true nodes always in
                cand = unique_targets(cand)  # [B, K], repeats -> -1
            valid = cand >= 0
            logits = self._score(features, t, cand.clamp(min=0))  # [B, K]
            is_true = (cand[:, :, None] == truth[t][:, None, :]).any(-1) & valid  # [B, K]
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # BCE in >= fp32 under bf16
            bce = F.binary_cross_entropy_with_logits(logits, is_true.to(logits.dtype), reduction="none")
            total = total + (bce * valid).sum() / valid.sum().clamp(min=1)
        return total

    @torch.no_grad()
    def topk(self, features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Beam search of width max(beam, k); scores are path probabilities (product of sigmoids), descending."""
        if not 1 <= k <= self.num_labels:
            raise ConfigError(f"k={k}: expected 1 <= k <= number of labels ({self.num_labels})")
        kept, logp = self._beam(features, max(self.beam, k), k)
        return logp.exp(), kept[-1]

    @torch.no_grad()
    def path_log_scores(self, features: torch.Tensor) -> torch.Tensor:
        """[B, num_labels] log path score of every label (brute force; for tests and small label sets)."""
        total = torch.zeros(features.shape[0], 1, dtype=features.dtype, device=features.device)
        for t in range(self.depth):
            logp = F.logsigmoid(features @ self.weights[t].T + self.biases[t])  # [B, n_t]
            total = total[:, self._up(t)] + logp if t else logp
        return total


def _validate(h: LabelHierarchy, num_labels: int) -> list[torch.Tensor]:
    """Check the tree; return the per-level child->parent maps, the label level last."""
    if not isinstance(h, LabelHierarchy):
        raise ConfigError(f"head.hierarchy: expected an xlc.heads.tree.LabelHierarchy "
                          f"(from xlc.baselines.tree.build_hierarchy), got {type(h).__name__}")
    ups = [torch.as_tensor(p, dtype=torch.long) for p in h.parents] + [torch.as_tensor(h.label_to_leaf, dtype=torch.long)]
    if len(ups) < 2 or len(ups[-1]) != num_labels:
        raise ConfigError(f"head.hierarchy: label_to_leaf has {len(ups[-1])} entries and {len(ups) - 1} cluster "
                          f"levels; expected {num_labels} entries and at least one level")
    if (ups[0] != 0).any():
        raise ConfigError("head.hierarchy.parents[0]: the first level's parents must all be 0 (the root)")
    for t in range(1, len(ups)):
        n_parent = len(ups[t - 1])
        if ups[t].min() < 0 or ups[t].max() >= n_parent or len(torch.unique(ups[t])) != n_parent:
            name = "label_to_leaf" if t == len(ups) - 1 else f"parents[{t}]"
            raise ConfigError(f"head.hierarchy.{name}: every value must lie in [0, {n_parent}) and every "
                              f"level-{t - 1} cluster needs at least one child")
    return ups
