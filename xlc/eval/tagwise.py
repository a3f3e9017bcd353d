"""The tag-wise statistic of multi-label neural collapse (Li, Wang, Li, Qu, ICML 2024), for sets of any size.

Property (M-lab NC iv): the centred mean of label set S is a scaled average of its labels' centred means,
`h~_S = alpha_m a_S` with `a_S = (1/|S|) sum_{k in S} mu~_k`, the scale alpha_m depending only on m = |S|
(it is where the PAL loss, sum or mean over S, shows up). Over the tracked sets (|S| >= 2, every label seen
in single-label rows):
- `tagwise_angle` = mean_S angle(h~_S, a_S) / mean angle(h~_S, average of |S| classes drawn uniformly with
  replacement): 0 when the property holds, ~1 at chance. For |S| = 2 the numerator is the paper's matched
  angle to mu~_a + mu~_b (a positive scale does not change an angle).
- `tagwise_scale_m` = alpha_m by least squares over the sets of size m: sum_S <h~_S, a_S> / sum_S ||a_S||^2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DRAW_BLOCK = 8192  # random baseline draws per block: a [block, |S|, d] gather at most


class LabelSetTable:
    """Feature sums per distinct label set: `keys [P, W]` (sorted labels padded with `num_classes`), `sums [P, d]`,
    `counts [P]`. Keeps the sets already tracked, then the lexicographically smallest new ones, up to `max_sets`."""

    def __init__(self, num_classes: int, dim: int, max_sets: int):
        self.num_classes, self.dim, self.max_sets = num_classes, dim, max_sets
        self.keys = torch.zeros(0, 0, dtype=torch.long)  # [P, W]
        self.sums = torch.zeros(0, dim, dtype=torch.float64)  # [P, d]
        self.counts = torch.zeros(0, dtype=torch.float64)  # [P]

    def add(self, keys: torch.Tensor, h: torch.Tensor) -> None:
        """Rows `keys [n, W']` (sorted labels, padded with num_classes) with features `h [n, d]`."""
        width = max(self.keys.shape[1], keys.shape[1])
        old = F.pad(self.keys, (0, width - self.keys.shape[1]), value=self.num_classes)  # [P, W]
        new = F.pad(keys, (0, width - keys.shape[1]), value=self.num_classes)  # [n, W]
        merged, inverse = torch.unique(torch.cat([old, new]), dim=0, return_inverse=True)  # sorted rows
        keep = torch.zeros(len(merged), dtype=torch.bool)
        keep[inverse[: len(old)]] = True
        fresh = torch.nonzero(~keep).squeeze(1)[: max(self.max_sets - len(old), 0)]
        keep[fresh] = True
        slot = keep.cumsum(0) - 1  # [U] position among the kept sets
        sums = torch.zeros(int(keep.sum()), self.dim, dtype=torch.float64)
        counts = torch.zeros(len(sums), dtype=torch.float64)
        sums[slot[inverse[: len(old)]]], counts[slot[inverse[: len(old)]]] = self.sums, self.counts
        ok = keep[inverse[len(old) :]]  # [n] rows whose set is tracked
        sums.index_add_(0, slot[inverse[len(old) :][ok]], h[ok])
        counts.index_add_(0, slot[inverse[len(old) :][ok]], torch.ones(int(ok.sum()), dtype=torch.float64))
        self.keys, self.sums, self.counts = merged[keep], sums, counts

    def metrics(self, centred: torch.Tensor, seen: torch.Tensor, mu_g: torch.Tensor, g: torch.Generator,
                num_draws: int) -> dict[str, float]:
        """Tag-wise angle and scales, given the centred class means `centred [C', d]` of classes `seen [C']`."""
        index = torch.full((self.num_classes + 1,), -1, dtype=torch.long)  # label -> row of `centred`
        index[seen] = torch.arange(len(seen))
        pos = index[self.keys]  # [P, W]; -1 for padding and unseen labels
        real = self.keys < self.num_classes  # [P, W]
        ok = (self.counts > 0) & ((pos >= 0) | ~real).all(1)  # [P] sets whose labels all have a mean
        if not ok.any():
            return {}
        pos, real = pos[ok], real[ok]
        size = real.sum(1)  # [P]
        h = self.sums[ok] / self.counts[ok, None] - mu_g  # [P, d] centred set means
        avg = (centred[pos.clamp(min=0)] * real[..., None]).sum(1) / size[:, None]  # [P, d] a_S
        out = {}
        for m in size.unique().tolist():
            sel = size == m
            out[f"tagwise_scale_{m}"] = float((h[sel] * avg[sel]).sum() / avg[sel].pow(2).sum().clamp(min=1e-300))
        draws = min(num_draws, len(h) * len(seen) ** int(size.max()))
        total = 0.0
        for lo in range(0, draws, DRAW_BLOCK):
            n = min(DRAW_BLOCK, draws - lo)
            s = torch.randint(len(h), (n,), generator=g)  # [n] a set per draw
            x = torch.randint(len(seen), (n, pos.shape[1]), generator=g)  # [n, W] random classes
            rand = (centred[x] * real[s][..., None]).sum(1) / size[s, None]  # [n, d]
            total += float(_angle(h[s], rand).sum())
        out["tagwise_angle"] = float(_angle(h, avg).mean() / (total / draws))
        return out


def _angle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1)).clamp(min=1e-300)
    return torch.arccos(cos.clamp(-1.0, 1.0))


__all__ = ["LabelSetTable"]
