"""Margin softmax over normalised weights (ArcFace, CosFace), for `sharded_softmax` and `mhs`.

Features and class weights are L2-normalised, cos_j = x.w_j / (|x| |w_j|), and a row with label y costs

    L = -log( e^{s psi(cos_y)} / (e^{s psi(cos_y)} + sum_{j != y} e^{s cos_j}) )
      = softplus( logsumexp_{j != y}(s cos_j) - s psi(cos_y) )

- `arcface` (additive angular, Deng et al. 2019, arXiv 1801.07698): psi(c) = cos(arccos c + m) =
  c cos m - sqrt(1 - c^2) sin m while arccos c + m <= pi, else c - m sin m (insightface's monotone
  continuation, so psi keeps decreasing in the angle); m = 0.5 by default.
- `cosface` (additive cosine, Wang et al. 2018, arXiv 1801.09414): psi(c) = c - m; m = 0.35 by default.

The sum over j != y runs through the chunked kernel with the targets excluded
(`chunked_logsumexp_excluding_targets`), so no B x C logits exist and, sharded, it is exact over all shards.
cos_y is computed on the rank owning label y (zero elsewhere) and summed over ranks with an identity
backward (`sum_over_ranks`), so its gradient reaches the owner's weight row once. Top-k ranks by s cos_j:
the margin only shapes training. Single-label targets only (a row of -1: loss 0).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xlc.errors import ConfigError
from xlc.heads._chunked import chunked_logsumexp_excluding_targets
from xlc.heads._dist import sum_over_ranks

MARGINS = ("arcface", "cosface", "none")
DEFAULT_M = {"arcface": 0.5, "cosface": 0.35}


def cosine_logits(x: torch.Tensor, w: torch.Tensor, b: None, *, scale: float) -> torch.Tensor:
    """`s * cos(x_i, w_j)` `[B, c]` (a chunked kernel's `logit_fn`; `b` is unused)."""
    return scale * F.normalize(x, dim=1) @ F.normalize(w, dim=1).T


@dataclass(frozen=True)
class Margin:
    """A margin softmax's kind, margin `m` and scale `s` (module docstring)."""

    kind: str
    m: float
    scale: float

    @classmethod
    def of(cls, kind: str, m: float | None, scale: float, bias: bool) -> "Margin | None":
        """The head options `margin`, `margin_m`, `margin_scale` checked together; None for `margin: none`."""
        if kind not in MARGINS:
            raise ConfigError(f"head.margin={kind!r}: expected one of {', '.join(MARGINS)}")
        if kind == "none":
            return None
        if bias:
            raise ConfigError(f"head.margin={kind!r} scores cosines of normalised weights, which take no bias: "
                              f"set head.bias: false")
        m = DEFAULT_M[kind] if m is None else m
        if not 0 <= m < (math.pi if kind == "arcface" else 2):
            raise ConfigError(f"head.margin_m={m}: expected 0 <= m < {'pi' if kind == 'arcface' else 2}")
        if not scale > 0:
            raise ConfigError(f"head.margin_scale={scale}: expected a positive number")
        return cls(kind, float(m), float(scale))

    @property
    def logit_fn(self):
        return functools.partial(cosine_logits, scale=self.scale)

    def psi(self, cos: torch.Tensor) -> torch.Tensor:
        """The target's margin cosine psi(cos) (module docstring), elementwise."""
        if self.kind == "cosface":
            return cos - self.m
        sin = torch.sqrt((1 - cos * cos).clamp(min=1e-12))  # its gradient stays finite at cos = +-1
        shifted = cos * math.cos(self.m) - sin * math.sin(self.m)  # cos(theta + m)
        return torch.where(cos > math.cos(math.pi - self.m), shifted, cos - self.m * math.sin(self.m))

    def loss(self, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, chunk: int | None,
             label_offset: int = 0, group=None) -> torch.Tensor:
        """Per-row loss `[B]` of features `x [B, d]` against this rank's classes `weight [C_local, d]` (global
        ids from `label_offset`); `targets` are global ids `[B]` (or `[B, 1]`), -1 for a row without label."""
        if targets.dim() == 2:
            if targets.shape[1] > 1:
                raise ConfigError(f"head.margin={self.kind!r} needs single-label targets; got {targets.shape[1]} "
                                  f"labels per row")
            targets = targets[:, 0]
        others = chunked_logsumexp_excluding_targets(
            x, weight, None, targets, chunk=chunk, label_offset=label_offset, group=group, logit_fn=self.logit_fn,
        )  # [B] logsumexp over j != y, all shards
        local = targets - label_offset  # [B]
        own = (targets >= 0) & (local >= 0) & (local < weight.shape[0])  # [B] rows whose label this rank holds
        w_y = F.normalize(weight[local.clamp(0, max(weight.shape[0] - 1, 0))], dim=1)  # [B, d]
        cos = torch.where(own, (F.normalize(x, dim=1) * w_y).sum(1), 0).to(others.dtype)  # [B]
        cos = sum_over_ranks(cos, group) if group is not None else cos
        per_row = F.softplus(others - self.scale * self.psi(cos.clamp(-1, 1)))  # [B]
        return torch.where(targets >= 0, per_row, 0)
