"""Multi-Head Sampling (MHE, Liang et al., TPAMI 2025): train a full classifier on sampled label groups."""

from __future__ import annotations

import torch
from torch import nn

from xlc.errors import ConfigError
from xlc.heads._chunked import chunked_cross_entropy, chunked_topk
from xlc.heads._init import init_linear
from xlc.heads._margin import Margin
from xlc.heads._targets import PAL_REDUCTIONS, check_choice, unique_targets, validate_targets
from xlc.heads.codec import contiguous_groups


class MHSHead(nn.Module):
    """Full classifier `z = x W^T + b`, W `[C, d]`, its labels split into contiguous groups of `group_size`.

    Training scores only the union U of the batch's true groups plus `sampled_groups` other groups drawn
    uniformly (the ArcFace-MHS_B1 variant), with targets remapped into U: loss = mean_i CE over U's labels
    (multi-label: pick-all-label, `multi_label_loss`). `topk` is exact over all C labels, chunked over
    labels. Same parameter names as `softmax`, so the trained classifier loads into it.
    `margin: arcface | cosface` (with `bias: false`): over U, the face-recognition form (ArcFaceMHS_B1) with
    the margin softmax over normalised weights of `xlc.heads._margin`; `topk` then ranks by cosine.
    https://arxiv.org/abs/2412.10182
    """

    def __init__(
        self,
        num_labels: int,
        in_dim: int,
        num_groups: int | None = None,
        group_size: int | None = None,
        sampled_groups: int = 4,
        bias: bool = True,
        chunk: int | None = None,
        multi_label_loss: str = "pal_mean",
        margin: str = "none",
        margin_m: float | None = None,
        margin_scale: float = 64.0,
    ):
        super().__init__()
        check_choice("multi_label_loss", multi_label_loss, PAL_REDUCTIONS)
        self.margin = Margin.of(margin, margin_m, margin_scale, bias)
        if not isinstance(sampled_groups, int) or sampled_groups < 0:
            raise ConfigError(f"sampled_groups={sampled_groups!r}: expected an integer >= 0 (extra groups per batch)")
        self.groups = contiguous_groups(num_labels, num_groups=num_groups, group_size=group_size)
        self.num_groups, self.group_size = self.groups.sizes
        self.sampled_groups, self.chunk, self.multi_label_loss = sampled_groups, chunk, multi_label_loss
        init_linear(self, num_labels, in_dim, bias)

    def sample_groups(self, targets: torch.Tensor) -> torch.Tensor:
        """Ascending group ids `[U]`: every group holding a target plus `sampled_groups` uniform others."""
        positives = targets[targets >= 0]  # [P]
        keys = torch.rand(self.num_groups, device=targets.device)  # [G] uniform order of the other groups
        keys[positives // self.group_size] = 2.0  # true groups sort before every sampled one
        num = min(self.num_groups, int((keys > 1).sum()) + self.sampled_groups)
        return keys.topk(num).indices.sort().values

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        validate_targets(targets, self.num_labels, features.shape[0])
        groups = self.sample_groups(targets)  # [U]
        labels = (groups[:, None] * self.group_size + torch.arange(self.group_size, device=groups.device)).flatten()
        labels = labels[labels < self.num_labels]  # [U * per minus padding], ascending
        t = unique_targets(targets)  # [B, M]
        local = torch.searchsorted(labels, t.clamp(min=0).contiguous())  # [B, M] position in U (targets are in U)
        local = torch.where(t >= 0, local, -1)
        if self.margin is not None:
            return self.margin.loss(features, self.weight[labels], local, chunk=self.chunk).mean()
        bias = None if self.bias is None else self.bias[labels]
        per_row = chunked_cross_entropy(
            features, self.weight[labels], bias, local, chunk=self.chunk, reduction=self.multi_label_loss
        )  # [B]
        return per_row.mean()

    def topk(self, features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        logit_fn = None if self.margin is None else self.margin.logit_fn
        return chunked_topk(features, self.weight, self.bias, k, chunk=self.chunk, logit_fn=logit_fn)


__all__ = ["MHSHead"]
