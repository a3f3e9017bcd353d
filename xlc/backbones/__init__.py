"""Backbones map a collated batch to features [B, out_dim]; `build_backbone` is the only constructor used.

Each backbone class says what it reads in `INPUT`: "sparse" (the feat_idx/feat_val columns), "text" or "image"
(the image column; the backbone is built with meta.json's image shape).
"""

from __future__ import annotations

import inspect

from torch import nn

from xlc.backbones.cnn import SmallResNet
from xlc.backbones.minilm import MiniLMEncoder
from xlc.backbones.mlp import SparseMLP
from xlc.backbones.xmlcnn import XMLCNN
from xlc.errors import ConfigError

BACKBONES = {"cnn": SmallResNet, "mlp": SparseMLP, "minilm": MiniLMEncoder, "xmlcnn": XMLCNN}


def backbone_input(name: str) -> str:
    """'sparse', 'text' or 'image': the dataset columns backbone `name` reads."""
    if name not in BACKBONES:
        raise ConfigError(f"backbone.name={name!r}: expected one of {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name].INPUT


def backbone_options(name: str) -> list[str]:
    """The option names (`backbone.options`) backbone `name` accepts."""
    backbone_input(name)
    params = inspect.signature(BACKBONES[name]).parameters
    return sorted(p for p in params if p not in ("num_features", "image", "hidden", "dropout"))


def check_dataset(name: str, *, num_features: int | None, text: bool, image: dict | None = None) -> None:
    """Raise `ConfigError` unless the dataset has the columns backbone `name` reads."""
    if backbone_input(name) == "sparse" and not num_features:
        raise ConfigError(f"backbone.name={name!r} needs a dataset with sparse features (meta.json num_features)")
    if backbone_input(name) == "text" and not text:
        raise ConfigError(f"backbone.name={name!r} needs a dataset with a text column (meta.json text: true)")
    if backbone_input(name) == "image" and not image:
        raise ConfigError(f"backbone.name={name!r} needs a dataset with an image column (meta.json image)")


def build_backbone(name: str, *, num_features: int | None, text: bool, hidden: list[int], dropout: float,
                   image: dict | None = None, **options) -> nn.Module:
    """Construct backbone `name` for a dataset with `num_features` sparse features, a `text` column and/or an
    `image` column of that shape ({"height", "width", "channels"});
    `options` are checked against the constructor (unknown ones raise `ConfigError` listing the valid ones)."""
    allowed = backbone_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"backbone.options.{unknown[0]}: not an option of backbone {name!r}; "
                          f"valid options: {', '.join(allowed) or '(none)'}")
    check_dataset(name, num_features=num_features, text=text, image=image)
    cls = BACKBONES[name]
    if cls.INPUT == "sparse":
        return cls(num_features, hidden, dropout, **options)
    if cls.INPUT == "image":
        return cls(image, hidden, dropout, **options)
    return cls(hidden, dropout, **options)
