"""Sparse-feature MLP: EmbeddingBag over (feature id, value) pairs, then ReLU MLP layers.

x = sum_j v_j E[f_j]  ->  [ReLU -> Linear]* -> dropout;  features [B, hidden[-1]].
The first layer is an `EmbeddingBag(mode="sum", per_sample_weights=values)`, i.e. a sparse
matrix product with a tf-idf row, so the input never becomes dense. With `sparse_grad` its gradient is
sparse too: only the rows a batch touches (see `xlc.train.step` for how they are reduced and updated with
lazy Adam). The default (None) turns it on from `SPARSE_FROM` input features: at 10^5 features a dense
table makes the step 12x slower (docs/benchmarks.md), while at ICD-10-CM's 23,355 the dense table with
AdamW kept MHP 3.9 P@1 points higher in the quickstart (80.02 vs 76.10, at half the samples/s).
"""

from __future__ import annotations

import torch
from torch import nn

SPARSE_FROM = 65_536  # input features from which the table's gradient is sparse by default


class SparseMLP(nn.Module):
    INPUT = "sparse"

    def __init__(self, num_features: int, hidden: list[int], dropout: float = 0.2, *,
                 sparse_grad: bool | None = None):
        super().__init__()
        if not hidden:
            raise ValueError("hidden must name at least one width")
        sparse = num_features >= SPARSE_FROM if sparse_grad is None else sparse_grad
        self.embed = nn.EmbeddingBag(num_features, hidden[0], mode="sum", sparse=sparse)
        self.bias = nn.Parameter(torch.zeros(hidden[0]))
        layers: list[nn.Module] = []
        for width_in, width_out in zip(hidden[:-1], hidden[1:]):
            layers += [nn.ReLU(), nn.Linear(width_in, width_out)]
        self.mlp = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(hidden[-1])
        self.dropout = nn.Dropout(dropout)
        self.out_dim = hidden[-1]

    def forward(self, batch) -> torch.Tensor:
        """`batch` has `feat_idx [nnz]`, `feat_offsets [B]`, `feat_val [nnz]` (an `xlc.data.Batch`)."""
        values = batch.feat_val.to(self.embed.weight.dtype)  # bf16 engines hold bf16 tables
        h = self.embed(batch.feat_idx, batch.feat_offsets, per_sample_weights=values) + self.bias  # [B, h0]
        return self.dropout(self.norm(self.mlp(h)))  # [B, out_dim]
