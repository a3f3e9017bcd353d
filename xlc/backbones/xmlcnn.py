"""XML-CNN (Liu et al., SIGIR 2017), a small CNN over the words of a text column.

words -> ids by a stable hash (crc32 mod `buckets`; 0 is padding) -> Embedding [B, T, E]
-> Conv1d(E, filters, k) + ReLU for each k in `kernel_sizes` -> dynamic max pooling into `pool_chunks`
pieces along T -> concat [B, len(k) * filters * pool_chunks] -> [Linear -> ReLU]* (the paper's bottleneck,
widths `hidden`) -> LayerNorm, dropout; features [B, hidden[-1]]. Hashing needs no vocabulary file, so a
dataset with a text column is all it needs.
"""

from __future__ import annotations

import re
import zlib

import torch
from torch import nn

from xlc.backbones.projection import Projection

_WORD = re.compile(r"\w+")


def hash_words(texts: list[str], buckets: int, max_length: int, min_length: int) -> torch.Tensor:
    """Long [B, T] word ids in [1, buckets), 0-padded; T = clamp(longest text, min_length, max_length)."""
    rows = [[zlib.crc32(w.encode()) % (buckets - 1) + 1 for w in _WORD.findall(t.lower())[:max_length]]
            for t in texts]
    width = max(min_length, max((len(r) for r in rows), default=0))
    out = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


class XMLCNN(nn.Module):
    INPUT = "text"

    def __init__(self, hidden: list[int], dropout: float = 0.2, *, buckets: int = 1 << 17, embed_dim: int = 128,
                 filters: int = 128, kernel_sizes: tuple[int, ...] = (2, 4, 8), pool_chunks: int = 2,
                 max_length: int = 128):
        super().__init__()
        if not hidden:
            raise ValueError("hidden must name at least one width (the bottleneck)")
        self.buckets, self.max_length, self.min_length = buckets, max_length, max(kernel_sizes)
        self.embed = nn.Embedding(buckets, embed_dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, filters, k) for k in kernel_sizes)
        self.pool = nn.AdaptiveMaxPool1d(pool_chunks)
        self.project = Projection(len(kernel_sizes) * filters * pool_chunks, hidden, dropout)  # the bottleneck
        self.out_dim = hidden[-1]

    def forward(self, batch) -> torch.Tensor:
        """`batch.text` is a list of B strings (an `xlc.data.Batch` of a dataset with a text column)."""
        ids = hash_words(batch.text, self.buckets, self.max_length, self.min_length).to(self.embed.weight.device)
        x = self.embed(ids).transpose(1, 2)  # [B, E, T]
        pooled = [self.pool(torch.relu(conv(x))).flatten(1) for conv in self.convs]  # each [B, filters * p]
        return self.project(torch.cat(pooled, dim=1))  # [B, out_dim]
