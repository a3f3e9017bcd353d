"""Classifier heads over extreme label counts, behind one written contract.

Targets are single-label `LongTensor[B]` or multi-label `LongTensor[B, M]` padded with -1 (a row may
hold only -1). Every head is an `nn.Module` satisfying `Head`; `build_head` is the only constructor the
rest of xlc uses. This package imports torch and `xlc.errors` only.

The contract, which is all the training package knows of a head:

- `Head`: `loss` and `topk` on one process's features. Replicated heads live inside the DeepSpeed
  engine and are averaged data-parallel like the backbone.
- `ShardedHead`: a `Head` whose label dimension is split across the ranks of `process_group`. Its state
  entries named in `label_sharded` hold rows [label_start, label_end) of the full tensor, so a checkpoint
  saved on W ranks is cut anew for any other world size. `loss` and `topk` run collectives: every rank
  must call them the same number of times, a rank with no rows left passing an empty `[0, in_dim]`
  batch. The trainer keeps it out of data-parallel averaging and gives it its own optimiser.
- `FittedHead`: a head whose constructor takes inputs fitted to the training split (the label tree of
  `tree`). `fit_inputs(training, options)` returns those constructor options as nested dicts/lists of
  tensors, which the trainer passes to `build_head` and stores with every checkpoint, so evaluation and
  resume rebuild the same head without refitting.

Adding a head is one module plus one line in `HEADS`.
"""

from __future__ import annotations

import inspect
from typing import Protocol, runtime_checkable

import torch

from xlc.errors import ConfigError
from xlc.heads.bce import BCEHead
from xlc.heads.etf import ETFHead
from xlc.heads.lowrank import LowRankHead
from xlc.heads.mhc import MHCHead
from xlc.heads.mhc_sharded import MHCShardedHead
from xlc.heads.mhp import MHPHead
from xlc.heads.mhs import MHSHead
from xlc.heads.rbf import RBFHead
from xlc.heads.sharded import ShardedBCEHead, ShardedSoftmaxHead
from xlc.heads.softmax import ChunkedSoftmaxHead, SoftmaxHead
from xlc.heads.training_split import TrainingSplit
from xlc.heads.tree import TreeHead


@runtime_checkable
class Head(Protocol):
    num_labels: int
    in_dim: int

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Scalar loss, the mean over the (global, for sharded heads) batch."""
        ...

    def topk(self, features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [B, k] descending, labels [B, k]): distinct valid labels per row."""
        ...


@runtime_checkable
class ShardedHead(Head, Protocol):
    """A head split by label range over `process_group`; see the module docstring for the collective rules."""

    label_start: int  # first global label id held by this rank
    label_end: int  # one past the last
    label_sharded: tuple[str, ...]  # state_dict entries whose dim 0 is [label_start, label_end)

    @property
    def process_group(self):
        """The group the label range is split over (None on a single process)."""
        ...


@runtime_checkable
class FittedHead(Protocol):
    @classmethod
    def fit_inputs(cls, training: TrainingSplit, options: dict) -> dict:
        """Constructor options fitted to the training split, as nested dicts/lists of tensors ({} when
        `options` already holds them)."""
        ...


# name -> class; each class takes (num_labels, in_dim, **options).
HEADS: dict[str, type[torch.nn.Module]] = {
    "softmax": SoftmaxHead,
    "chunked_softmax": ChunkedSoftmaxHead,
    "sharded_softmax": ShardedSoftmaxHead,
    "bce": BCEHead,
    "sharded_bce": ShardedBCEHead,
    "mhp": MHPHead,
    "mhc": MHCHead,
    "mhc_sharded": MHCShardedHead,
    "mhs": MHSHead,
    "etf": ETFHead,
    "rbf": RBFHead,
    "tree": TreeHead,
    "lowrank": LowRankHead,
}


def head_class(name: str) -> type[torch.nn.Module]:
    if name not in HEADS:
        raise ConfigError(f"head.name={name!r}: expected one of {', '.join(sorted(HEADS))}")
    return HEADS[name]


def head_options(name: str) -> list[str]:
    """The option names `build_head(name, ...)` accepts."""
    return sorted(p for p in inspect.signature(head_class(name)).parameters if p not in ("num_labels", "in_dim"))


def build_head(name: str, num_labels: int, in_dim: int, **options) -> torch.nn.Module:
    """Construct head `name`; unknown names or options raise `ConfigError` (a ValueError) listing the valid ones."""
    cls, allowed = head_class(name), head_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"head.{unknown[0]}: not an option of head {name!r}; valid options: {', '.join(allowed) or '(none)'}"
        )
    if num_labels < 2:
        raise ConfigError(f"num_labels={num_labels}: a classifier needs at least 2 labels")
    return cls(num_labels=num_labels, in_dim=in_dim, **options)


def fit_head_inputs(name: str, training: TrainingSplit, options: dict) -> dict:
    """The fitted constructor inputs of head `name` ({} for heads that need none)."""
    cls = head_class(name)
    return cls.fit_inputs(training, options) if isinstance(cls, FittedHead) else {}


def needs_training_split(name: str) -> bool:
    return isinstance(head_class(name), FittedHead)


__all__ = [
    "HEADS", "FittedHead", "Head", "ShardedHead", "TrainingSplit", "build_head", "fit_head_inputs", "head_class",
    "head_options", "needs_training_split",
]
