"""Initial weights of the linear heads: U(+-1/sqrt(d)) (nn.Linear's bound) and a constant bias.

`init_linear` draws a single-process head's whole matrix; `init_shard` draws a sharded head's rows per
block of global label ids, so the full matrix is the same for any world size.
"""

from __future__ import annotations

import math

import torch
from torch import nn

INIT_BLOCK = 4096  # labels per seeded block in `init_shard`


def init_linear(module: nn.Module, num_labels: int, in_dim: int, bias: bool, bias_value: float = 0.0) -> None:
    """Give `module` `num_labels`, `in_dim`, a `weight [C, d]` ~ U(+-1/sqrt(d)) and a constant `bias [C]` (or None)."""
    module.num_labels, module.in_dim = num_labels, in_dim
    bound = 1 / math.sqrt(in_dim)
    module.weight = nn.Parameter(torch.empty(num_labels, in_dim).uniform_(-bound, bound))  # [C, d]
    module.bias = nn.Parameter(torch.full((num_labels,), float(bias_value))) if bias else None  # [C]


def init_shard(
    shard, in_dim: int, bias: bool, seed: int, bias_value: float = 0.0
) -> tuple[nn.Parameter, nn.Parameter | None]:
    """Rows [shard.start, shard.end) of a `weight [C, d]` ~ U(+-1/sqrt(d)) seeded per block, and a constant bias.

    `shard`: anything with `start` and `end` global label ids (a `sharded.LabelShard`).
    """
    bound = 1 / math.sqrt(in_dim)
    weight = torch.empty(shard.end - shard.start, in_dim)  # [C_local, d]
    for block in range(shard.start // INIT_BLOCK, -(-shard.end // INIT_BLOCK)):
        lo, hi = block * INIT_BLOCK, (block + 1) * INIT_BLOCK
        gen = torch.Generator().manual_seed(seed * 1_000_003 + block)
        rows = torch.empty(INIT_BLOCK, in_dim).uniform_(-bound, bound, generator=gen)  # [BLOCK, d]
        a, b = max(lo, shard.start), min(hi, shard.end)
        weight[a - shard.start : b - shard.start] = rows[a - lo : b - lo]
    return nn.Parameter(weight), nn.Parameter(torch.full((len(weight),), float(bias_value))) if bias else None
