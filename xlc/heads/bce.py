"""One-vs-all sigmoid classifier over all labels, chunked (`bce`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from xlc.heads._chunked import chunked_bce, chunked_topk
from xlc.heads._init import init_linear
from xlc.heads._targets import LABEL_REDUCTIONS, check_choice, validate_targets


class BCEHead(nn.Module):
    """One-vs-all logistic head `z = x W^T + b`; per row `sum_j BCEWithLogits(z_j, y_j)`, y = multi-hot.

    `label_reduction="mean"` divides each row by C (PyTorch's / LightXML's elementwise mean); "sum" keeps
    the positive's gradient independent of C. The loss is the mean over the batch, computed per label
    chunk (never a dense [B, C] target or logit). `topk` ranks by logit, exactly. Nothing is sharded.
    Single-label targets are one-hot; an all -1 row is all negatives. (Renee-style exact OvA, ICLR 2023.)
    """

    def __init__(
        self,
        num_labels: int,
        in_dim: int,
        *,
        bias: bool = True,
        chunk: int | None = None,
        label_reduction: str = "sum",
    ):
        super().__init__()
        check_choice("label_reduction", label_reduction, LABEL_REDUCTIONS)
        # b = -log C puts every initial sigmoid near the label prior 1/C, so the first steps are not spent
        # pushing C negatives down from 0.5 (an initial loss of C ln 2 per row).
        init_linear(self, num_labels, in_dim, bias, bias_value=-math.log(num_labels))
        self.chunk, self.label_reduction = chunk, label_reduction

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        validate_targets(targets, self.num_labels, features.shape[0])
        per_row = chunked_bce(
            features, self.weight, self.bias, targets, chunk=self.chunk, label_reduction=self.label_reduction
        )  # [B]
        return per_row.mean()

    def topk(self, features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return chunked_topk(features, self.weight, self.bias, k, chunk=self.chunk)
