"""On-the-fly image augmentation of a batch, on whatever device the batch is: pure torch, one kernel per step.

    x' = contrast * grid_sample(x, A_i) + brightness      per image i, each draw scaled by `strength`

A_i maps output to input coordinates (`F.affine_grid`, normalised to [-1, 1]): rotation U(-8, 8) deg, scale
x U(0.9, 1.1), shift U(-0.06, 0.06) of the side; contrast U(0.8, 1.2), brightness U(-0.1, 0.1) in [0, 1]
pixel units; zero padding (the glyph background). Draws come from torch's default generator of the device,
which the trainer checkpoints per rank, so a resumed run draws what the uninterrupted one would.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """`x` float [B, C, H, W] in [0, 1] -> the same shape, each image randomly transformed (module docstring)."""
    b = x.shape[0]

    def draw(half_width: float) -> torch.Tensor:  # [B] uniform in +-half_width * strength
        return (torch.rand(b, device=x.device, dtype=x.dtype) * 2 - 1) * half_width * strength

    angle, scale = draw(math.radians(8)), 1 + draw(0.1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale  # [B]
    rows = [torch.stack([cos, -sin, draw(0.12)], 1), torch.stack([sin, cos, draw(0.12)], 1)]  # 2 x [B, 3]
    theta = torch.stack(rows, 1)  # [B, 2, 3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # [B, H, W, 2]
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    contrast, brightness = 1 + draw(0.2), draw(0.1)  # [B]
    return (out * contrast[:, None, None, None] + brightness[:, None, None, None]).clamp(0, 1)
