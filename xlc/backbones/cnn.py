"""A small ResNet for glyph-sized images (32-64 px), channels-last.

uint8 pixels [B, H*W*C] -> [B, C, H, W] in [0, 1] -> (training mode: `xlc.data.augment.random_affine`) ->
(x - 0.5) / 0.5 -> stem Conv3x3(C, width) + BN + ReLU -> stages s = 0..S-1 of `depth[s]` basic blocks
(two Conv3x3 + BN, identity or 1x1-conv shortcut) at width * 2^s channels, stride 2 entering every stage
but the first -> global average pool [B, width * 2^(S-1)] -> [Linear -> ReLU]* to `hidden`, LayerNorm,
dropout; features [B, hidden[-1]]. With depth (2, 2, 2) on 32 x 32 the last stage sees 8 x 8.
Activations are channels-last (NHWC), the layout cuDNN's tensor-core kernels and oneDNN's CPU kernels prefer;
a convolution keeps the layout of its input. The weights keep the default layout: DeepSpeed's parameter
broadcast and flattening need contiguous tensors (the kernels reorder a 3 x 3 filter bank per call, which is
small next to the activations). BatchNorm uses per-rank batch statistics in training and running ones in
evaluation, so evaluated features of a row never depend on its batch.
"""

from __future__ import annotations

import torch
from torch import nn

from xlc.backbones.projection import Projection
from xlc.data.augment import random_affine


class BasicBlock(nn.Module):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)), the first conv with `stride`."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class SmallResNet(nn.Module):
    INPUT = "image"

    def __init__(self, image: dict, hidden: list[int], dropout: float = 0.0, *, width: int = 32,
                 depth: list[int] = (2, 2, 2), augment: float = 1.0):
        super().__init__()
        if width < 1 or not depth or min(depth) < 1:
            raise ValueError(f"width={width}, depth={list(depth)}: expected width >= 1 and >= 1 block per stage")
        self.shape = (image["height"], image["width"], image["channels"])
        self.augment = augment
        self.stem = nn.Sequential(nn.Conv2d(self.shape[2], width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        blocks, c_in = [], width
        for stage, blocks_here in enumerate(depth):
            c_out = width * 2**stage
            for i in range(blocks_here):
                blocks.append(BasicBlock(c_in, c_out, 2 if stage > 0 and i == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.project = Projection(c_in, hidden, dropout)
        self.out_dim = self.project.out_dim

    def forward(self, batch) -> torch.Tensor:
        """`batch.image` is uint8 [B, H*W*C] (an `xlc.data.Batch` of a dataset with an image column)."""
        h, w, c = self.shape
        dtype = self.stem[0].weight.dtype
        x = batch.image.to(self.stem[0].weight.device).view(-1, h, w, c).permute(0, 3, 1, 2)  # [B, C, H, W] NHWC memory
        x = x.to(dtype).div_(255)
        if self.training and self.augment > 0:
            x = random_affine(x.float(), self.augment).to(dtype)
        x = ((x - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)
        y = self.blocks(self.stem(x))  # [B, width * 2^(S-1), H', W']
        return self.project(y.mean(dim=(2, 3)))  # [B, out_dim]
