"""Backbones map a collated batch to features [B, out_dim]; `build_backbone` is the only constructor used."""

from __future__ import annotations

from torch import nn

from xlc.backbones.mlp import SparseMLP
from xlc.errors import ConfigError

BACKBONES = {"mlp": SparseMLP}


def build_backbone(name: str, *, num_features: int | None, hidden: list[int], dropout: float, **options) -> nn.Module:
    if name not in BACKBONES:
        raise ConfigError(f"backbone.name={name!r}: expected one of {', '.join(sorted(BACKBONES))}")
    if name == "mlp":
        if not num_features:
            raise ConfigError("backbone.name='mlp' needs a dataset with sparse features (meta.json num_features)")
        if options:
            raise ConfigError(f"backbone.options: mlp takes none, got {', '.join(sorted(options))}")
        return SparseMLP(num_features, hidden, dropout)
    raise AssertionError(name)
