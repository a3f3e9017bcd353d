"""Classifier heads over extreme label counts, behind one interface.

Targets are single-label `LongTensor[B]` or multi-label `LongTensor[B, M]` padded with -1
(a row may hold only -1). Every head is an `nn.Module` satisfying `Head`; `build_head` is the
only constructor the rest of xlc uses. This package imports torch and `xlc.errors` only.
"""

from __future__ import annotations

import inspect
from typing import Protocol, runtime_checkable

import torch

from xlc.errors import ConfigError
from xlc.heads.bce import BCEHead
from xlc.heads.etf import ETFHead
from xlc.heads.mhc import MHCHead
from xlc.heads.mhc_sharded import MHCShardedHead
from xlc.heads.mhp import MHPHead
from xlc.heads.mhs import MHSHead
from xlc.heads.rbf import RBFHead
from xlc.heads.sharded import ShardedBCEHead, ShardedSoftmaxHead
from xlc.heads.softmax import ChunkedSoftmaxHead, SoftmaxHead
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
}


def build_head(name: str, num_labels: int, in_dim: int, **options) -> torch.nn.Module:
    """Construct head `name`; unknown names or options raise `ConfigError` (a ValueError) listing the valid ones."""
    if name not in HEADS:
        raise ConfigError(f"head.name={name!r}: expected one of {', '.join(sorted(HEADS))}")
    cls = HEADS[name]
    params = inspect.signature(cls).parameters
    allowed = sorted(p for p in params if p not in ("num_labels", "in_dim", "self"))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"head.{unknown[0]}: not an option of head {name!r}; valid options: {', '.join(allowed) or '(none)'}"
        )
    if num_labels < 2:
        raise ConfigError(f"num_labels={num_labels}: a classifier needs at least 2 labels")
    return cls(num_labels=num_labels, in_dim=in_dim, **options)


def head_options(name: str) -> list[str]:
    """The option names `build_head(name, ...)` accepts."""
    if name not in HEADS:
        raise ConfigError(f"head.name={name!r}: expected one of {', '.join(sorted(HEADS))}")
    return sorted(p for p in inspect.signature(HEADS[name]).parameters if p not in ("num_labels", "in_dim"))


__all__ = ["HEADS", "Head", "build_head", "head_options"]
