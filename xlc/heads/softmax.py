"""Full-softmax classifiers: the plain reference (`softmax`) and its exact label-chunked twin (`chunked_softmax`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xlc.heads._chunked import chunked_cross_entropy, chunked_topk, compute_dtypes, linear_logits, topk_lowest_index
from xlc.heads._init import init_linear
from xlc.heads._targets import PAL_REDUCTIONS, check_choice, check_k, validate_targets


class SoftmaxHead(nn.Module):
    """Linear softmax classifier `z = x W^T + b`; loss = CE(z, y), the reference that materialises B x C.

    Multi-label targets use the pick-all-label loss (Li et al., ICML 2024, arXiv 2310.15903): `pal_sum` =
    sum_{k in S} -log softmax(z)_k, `pal_mean` = that / |S|; a row with no label gives 0 but still counts
    in the batch mean. `topk` is exact (ties go to the lower label). Nothing is sharded.
    """

    def __init__(self, num_labels: int, in_dim: int, *, bias: bool = True, multi_label_loss: str = "pal_mean"):
        super().__init__()
        check_choice("multi_label_loss", multi_label_loss, PAL_REDUCTIONS)
        init_linear(self, num_labels, in_dim, bias)
        self.multi_label_loss = multi_label_loss

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        cd, acc = compute_dtypes(features, self.weight)
        bias = None if self.bias is None else self.bias.to(cd)
        return linear_logits(features.to(cd), self.weight.to(cd), bias).to(acc)  # [B, C]

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        batch = features.shape[0]
        validate_targets(targets, self.num_labels, batch)
        z = self.logits(features)  # [B, C]
        if targets.dim() == 1:
            return F.cross_entropy(z, targets, ignore_index=-1, reduction="sum") / batch
        rows, cols = (targets >= 0).nonzero(as_tuple=True)
        y = torch.zeros_like(z)  # [B, C] dense multi-hot: fine for the reference head
        y[rows, targets[rows, cols]] = 1.0  # a repeated label is still one positive
        if self.multi_label_loss == "pal_mean":
            y = y / y.sum(1, keepdim=True).clamp(min=1)
        return F.cross_entropy(z, y, reduction="sum") / batch

    @torch.no_grad()
    def topk(self, features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        check_k(k, self.num_labels)
        return topk_lowest_index(self.logits(features), k)


class ChunkedSoftmaxHead(nn.Module):
    """`SoftmaxHead`'s exact function and parameter names, computed over label chunks (never B x C).

    Loss and gradients come from `chunked_cross_entropy` (online log-sum-exp, logits recomputed in
    backward), so memory is O(B x chunk); `chunk=None`: a 16 MiB (CPU) / 128 MiB (CUDA) fp32 block.
    `topk` is exact (running top-k merged per chunk; ties go to the lower label). Nothing is sharded.
    """

    def __init__(
        self,
        num_labels: int,
        in_dim: int,
        *,
        bias: bool = True,
        chunk: int | None = None,
        multi_label_loss: str = "pal_mean",
    ):
        super().__init__()
        check_choice("multi_label_loss", multi_label_loss, PAL_REDUCTIONS)
        init_linear(self, num_labels, in_dim, bias)
        self.chunk, self.multi_label_loss = chunk, multi_label_loss

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        validate_targets(targets, self.num_labels, features.shape[0])
        per_row = chunked_cross_entropy(
            features, self.weight, self.bias, targets, chunk=self.chunk, reduction=self.multi_label_loss
        )  # [B]
        return per_row.mean()

    def topk(self, features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return chunked_topk(features, self.weight, self.bias, k, chunk=self.chunk)
