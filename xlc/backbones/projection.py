"""The layers above a text encoder: [Linear -> ReLU] per hidden width, then LayerNorm and dropout."""

from __future__ import annotations

import torch
from torch import nn


class Projection(nn.Module):
    """x [B, in_dim] -> dropout(LayerNorm([Linear -> ReLU]*(x))) [B, out_dim]; out_dim = hidden[-1], or in_dim
    when `hidden` is empty (then only the LayerNorm and dropout apply)."""

    def __init__(self, in_dim: int, hidden: list[int], dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        for width_in, width_out in zip([in_dim, *hidden[:-1]], hidden):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        self.mlp = nn.Sequential(*layers)
        self.out_dim = hidden[-1] if hidden else in_dim
        self.norm = nn.LayerNorm(self.out_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.norm(self.mlp(x)))
