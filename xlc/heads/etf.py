"""Fixed simplex-ETF classifier with the dot-regression loss (Yang et al., NeurIPS 2022)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from xlc.errors import ConfigError
from xlc.heads._chunked import topk_lowest_index
from xlc.heads._targets import PAL_REDUCTIONS, check_choice, check_k
from xlc.heads.codec import positive_pairs


def simplex_etf(dim: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """`M = sqrt(K/(K-1)) U V^T` `[dim, K]`: unit columns with pairwise dot -1/(K-1); needs dim >= K - 1.

    V `[K, K-1]` is an orthonormal basis of the complement of 1 (V V^T = I - 11^T/K), so the K columns
    live in a (K-1)-dim subspace: a simplex ETF exists up to K = dim + 1. U `[dim, K-1]` has orthonormal
    columns from the QR of a seeded uniform matrix (the paper's random rotation). M^T M = K/(K-1) (I - 11^T/K).
    """
    if num_classes < 2 or dim < num_classes - 1:
        raise ConfigError(f"simplex ETF of {num_classes} classes in {dim} dims: needs 2 <= classes <= dims + 1")
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.rand(dim, num_classes - 1, generator=gen, dtype=torch.float64))  # [d, K-1]
    centre = torch.eye(num_classes, dtype=torch.float64) - 1.0 / num_classes  # [K, K], rank K-1
    v, _ = torch.linalg.qr(centre[:, :-1])  # [K, K-1] spans the same column space as `centre`
    return (math.sqrt(num_classes / (num_classes - 1)) * u @ v.T).to(torch.get_default_dtype())  # [d, K]


def dot_regression(
    h: torch.Tensor, etf: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, batch: int, reweight: bool
) -> torch.Tensor:
    """`0.5 * sum_n weight_n (h_n.w_n - ||w_n|| ||h_n||)^2 / ||h_n|| / batch` with `||h_n||` detached.

    `h [N, d]` holds one feature per (row, positive label) pair, `labels [N]` index the columns of
    `etf [d, K]`. With `reweight`, `w_n = sqrt(gamma / n_k) m_k` for k = labels_n, where n_k counts k
    among the N pairs and gamma = N / #distinct labels (the code's `GivenEw`); else `w_n = m_k`.
    """
    w = etf.T[labels]  # [N, d]
    if reweight:
        counts = torch.bincount(labels, minlength=etf.shape[1]).to(h.dtype)  # [K]
        gamma = labels.numel() / (counts > 0).sum().to(h.dtype)
        w = w * torch.sqrt(gamma / counts[labels])[:, None]  # [N, d]
    h_norm = h.norm(dim=1).detach()  # [N]
    residual = (h * w).sum(1) - w.norm(dim=1) * h_norm  # [N]
    return 0.5 * (weights.to(h.dtype) * residual.pow(2) / h_norm).sum() / batch


class ETFHead(nn.Module):
    """Fixed simplex-ETF classifier M `[d, C]` (a buffer) on BatchNorm + L2-normalised features.

    loss = dot regression `0.5 mean_i (h_i.w_yi - ||w_yi|| ||h_i||)^2 / ||h_i||`, `w_k = sqrt(gamma/n_k) m_k`
    per batch (`reweight`); multi-label rows sum / average (`multi_label_loss`) one term per positive.
    `topk` ranks `h^T M` exactly. Needs C <= in_dim + 1 (a simplex ETF spans C - 1 dims); beyond that use
    `mhp` with `etf=True` (one ETF per head). Paper: https://arxiv.org/abs/2203.09081
    """

    def __init__(
        self, num_labels: int, in_dim: int, reweight: bool = True, seed: int = 0, multi_label_loss: str = "pal_mean"
    ):
        super().__init__()
        check_choice("multi_label_loss", multi_label_loss, PAL_REDUCTIONS)
        if num_labels > in_dim + 1:
            raise ConfigError(
                f"head etf: num_labels={num_labels} > in_dim + 1={in_dim + 1}, the most classes a simplex ETF holds; "
                "use head.name=mhp with etf=true (one ETF per head of size <= its feature dim)"
            )
        self.num_labels, self.in_dim = num_labels, in_dim
        self.reweight, self.multi_label_loss = reweight, multi_label_loss
        self.bn = nn.BatchNorm1d(in_dim)
        self.register_buffer("etf", simplex_etf(in_dim, num_labels, seed))  # [d, C]

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.bn(features), dim=1, eps=1e-8)  # [B, d], unit rows

    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        rows, labels, weights = positive_pairs(targets, self.num_labels, features.shape[0], self.multi_label_loss)
        h = self.embed(features)[rows]  # [N, d]
        return dot_regression(h, self.etf, labels, weights, features.shape[0], self.reweight)

    @torch.no_grad()
    def topk(self, features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        check_k(k, self.num_labels)
        return topk_lowest_index(self.embed(features) @ self.etf, k)  # C <= d + 1, so [B, C] is small


__all__ = ["ETFHead", "dot_regression", "simplex_etf"]
