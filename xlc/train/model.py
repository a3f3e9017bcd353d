"""Model assembly, free of Ray: the backbone and head a run config describes, and their check before a run.

A head satisfying `xlc.heads.ShardedHead` stays outside `Model` (and so outside DeepSpeed's data-parallel
averaging); any other head is part of it.
"""

from __future__ import annotations

import torch

from xlc.backbones import build_backbone
from xlc.config import RunConfig
from xlc.data.schema import DatasetMeta
from xlc.errors import ConfigError
from xlc.heads import ShardedHead, build_head
from xlc.heads import head_options as head_option_names


class Model(torch.nn.Module):
    """The data-parallel part: the backbone, plus the head when it is replicated (not label-sharded).

        model(batch)              the backbone's features [B, d] (a sharded head outside applies its loss or
                                  top-k to them, on every rank)
        model(batch, loss=True)   the replicated head's loss on `batch.targets`
        model(batch, k=k)         the replicated head's top-k (scores, labels) [B, k]

    A replicated head is used inside `forward`, never beside it: ZeRO-3 holds each rank's partition of the
    parameters and gathers them around calls of the wrapped module (`xlc.train.step.Step` ties the head's to
    this module's calls), so a head applied to the returned features would see empty tensors.
    """

    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Module | None):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, batch, *, loss: bool = False, k: int | None = None):
        features = self.backbone(batch)  # [B, d]
        if loss:
            return self.head.loss(features, batch.targets)
        if k is not None:
            return self.head.topk(features, k)
        return features


def build_model(cfg: RunConfig, meta: DatasetMeta, head_inputs: dict | None = None
                ) -> tuple[Model, torch.nn.Module]:
    """(model, head) for `cfg` on `meta`'s dataset; `head_inputs` are a fitted head's constructor inputs."""
    backbone = build_backbone(
        cfg.backbone.name, num_features=meta.num_features, text=meta.text, image=meta.image,
        hidden=cfg.backbone.hidden, dropout=cfg.backbone.dropout, **cfg.backbone.options,
    )
    head = build_head(cfg.head.name, meta.num_labels, backbone.out_dim, **head_options(cfg, meta), **(head_inputs or {}))
    return Model(backbone, None if isinstance(head, ShardedHead) else head), head


def head_options(cfg: RunConfig, meta: DatasetMeta) -> dict:
    """The configured head options; a head that takes `multi_label` and was not told gets the dataset's."""
    options = dict(cfg.head.options)
    if "multi_label" in head_option_names(cfg.head.name):
        options.setdefault("multi_label", meta.multi_label)
    return options


def check_model(cfg: RunConfig, meta: DatasetMeta) -> None:
    """Build the backbone and head on the meta device (no memory, no data), so that every bad option value
    is reported at once, one line per component, before Ray or MLflow start."""
    errors = []
    in_dim = cfg.backbone.hidden[-1] if cfg.backbone.hidden else None
    with torch.device("meta"):
        try:
            in_dim = build_backbone(
                cfg.backbone.name, num_features=meta.num_features, text=meta.text, image=meta.image,
                hidden=cfg.backbone.hidden, dropout=cfg.backbone.dropout, **cfg.backbone.options,
            ).out_dim
        except (TypeError, ValueError, RuntimeError) as e:  # ConfigError included
            errors.append(_field_message("backbone", cfg.backbone.name, e))
        if in_dim is not None:
            try:
                build_head(cfg.head.name, meta.num_labels, in_dim, **head_options(cfg, meta))
            except (TypeError, ValueError, RuntimeError) as e:
                errors.append(_field_message("head", cfg.head.name, e))
    if errors:
        raise ConfigError("\n".join(errors))


def _field_message(section: str, name: str, error: Exception) -> str:
    """A component's error as one line under its config section: `head.rank=0: expected ...`."""
    text = " ".join(str(error).split())
    if isinstance(error, ConfigError):
        return text if text.startswith(section) else f"{section}.{text}"
    return f"{section} {name!r}: {text}"


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
