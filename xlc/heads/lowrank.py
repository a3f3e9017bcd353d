"""Linear bottleneck classifier (`lowrank`): logits W2 (W1 x) + b with rank(W2 W1) <= `rank`."""

from __future__ import annotations

import torch
from torch import nn

from xlc.errors import ConfigError
from xlc.heads._chunked import chunked_cross_entropy, chunked_topk, gathered_dot
from xlc.heads._init import init_linear
from xlc.heads._targets import PAL_REDUCTIONS, check_choice
from xlc.heads.codec import positive_pairs

LOSSES = ("ce", "mse")


class LowRankHead(nn.Module):
    """`z = W2 (W1 x) + b`, W1 `[r, d]` (`proj`), W2 `[C, r]` (`weight`, rows = label embeddings), b `[C]`.

    loss "ce": softmax CE over z (multi-label: pick-all-label `pal_sum` / `pal_mean`), label-chunked by
    `chunked_cross_entropy` on h = W1 x. "mse" (MHE's Eq. 17 setting, Frobenius loss against one-hot):
    `mean_i ||z_i - t_i||^2`, t_i the row's PAL target (1 per positive, or 1/|S| with `pal_mean`), in
    closed form `h^T (W2^T W2) h + 2 h.(W2^T b) + ||b||^2 - 2 sum_k t_k z_k + ||t||^2`: no B x C block at
    all. `topk` is exact by z (`chunked_topk`). Nothing is sharded. https://arxiv.org/abs/2412.10182
    """

    def __init__(
        self,
        num_labels: int,
        in_dim: int,
        *,
        rank: int = 64,
        bias: bool = True,
        loss: str = "ce",
        chunk: int | None = None,
        multi_label_loss: str = "pal_mean",
    ):
        super().__init__()
        check_choice("loss", loss, LOSSES)
        check_choice("multi_label_loss", multi_label_loss, PAL_REDUCTIONS)
        if not isinstance(rank, int) or rank < 1:
            raise ConfigError(f"head.rank={rank!r}: expected an integer >= 1")
        self.proj = nn.Linear(in_dim, rank, bias=False)  # W1 [r, d], U(+-1/sqrt(d))
        init_linear(self, num_labels, rank, bias)  # W2 `weight` [C, r] ~ U(+-1/sqrt(r)), `bias` [C]
        self.in_dim, self.rank = in_dim, rank
        self.objective, self.chunk, self.multi_label_loss = loss, chunk, multi_label_loss

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        batch = features.shape[0]
        h = self.proj(features)  # [B, r]
        acc = torch.promote_types(h.dtype, torch.float32)
        rows, labels, t = positive_pairs(targets, self.num_labels, batch, self.multi_label_loss, acc)  # validates
        if self.objective == "ce":
            per_row = chunked_cross_entropy(
                h, self.weight, self.bias, targets, chunk=self.chunk, reduction=self.multi_label_loss
            )  # [B]
            return per_row.mean()
        h, w = h.to(acc), self.weight.to(acc)
        squares = (h @ (w.T @ w) * h).sum()  # sum_i ||W2 h_i||^2 via the [r, r] Gram
        picked = gathered_dot(w, h, labels, rows)  # [N] z_k - b_k for each (row, positive); t [N] its target
        if self.bias is not None:
            b = self.bias.to(acc)
            squares = squares + 2 * (h @ (w.T @ b)).sum() + batch * b.pow(2).sum()
            picked = picked + b[labels]
        return (squares - 2 * (t * picked).sum() + t.pow(2).sum()) / batch

    def topk(self, features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            h = self.proj(features)  # [B, r]
        return chunked_topk(h, self.weight, self.bias, k, chunk=self.chunk)


__all__ = ["LowRankHead"]
