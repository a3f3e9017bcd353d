"""Mixed-radix label codes: label y <-> digits (y_1, ..., y_H), first digit most significant.

`y = sum_h y_h * prod_{h' > h} L_h'`, i.e. one_hot(y) reshaped to L_1 x ... x L_H is the Kronecker
product of the digits' one-hots (MHE, Liang et al. 2025, §1.1 of the algorithm notes). When
prod L_h > C the codes >= C are invalid; `is_valid` says which, and decoders must mask them.
"""

from __future__ import annotations

import math

import torch

from xlc.errors import ConfigError, DataError
from xlc.heads._targets import PAL_REDUCTIONS, check_choice, unique_targets, validate_targets


def _int_root(n: int, h: int) -> int:
    """floor(n ** (1/h)) computed exactly on integers."""
    r = int(round(n ** (1.0 / h)))
    while r**h > n:
        r -= 1
    while (r + 1) ** h <= n:
        r += 1
    return r


def balanced_sizes(num_labels: int, num_heads: int) -> list[int]:
    """Head sizes ~C^(1/H) each, with waste prod - C < prod(sizes[1:]).

    The trailing H-1 sizes are taken from {f, f+1} (f = floor(C^(1/H))) and the leading one is
    ceil(C / prod(trailing)), which is exactly the waste rule. Among those H candidates the one
    with the smallest spread max-min, then the smallest waste, wins.
    """
    if num_heads == 1:
        return [num_labels]
    f = max(1, _int_root(num_labels, num_heads))
    best = None
    for n_big in range(num_heads):  # how many trailing digits get f + 1 (the larger ones first)
        trailing = [f + 1] * n_big + [f] * (num_heads - 1 - n_big)
        sizes = [-(-num_labels // math.prod(trailing))] + trailing
        key = (max(sizes) - min(sizes), math.prod(sizes) - num_labels)
        if best is None or key < best[0]:
            best = (key, sizes)
    return best[1]


class MixedRadix:
    """Label codec over head sizes `sizes` (first digit most significant, product >= num_labels).

    Give `sizes` explicitly, or `num_heads` (default 2) to get balanced sizes obeying the MHE
    waste rule: prod(sizes) - num_labels < prod(sizes[1:]) (less than one leading-digit value).
    """

    def __init__(self, num_labels: int, sizes: list[int] | None = None, num_heads: int | None = None):
        if not isinstance(num_labels, int) or num_labels < 1:
            raise ConfigError(f"num_labels={num_labels!r}: expected an integer >= 1")
        if sizes is None:
            num_heads = 2 if num_heads is None else num_heads
            if not isinstance(num_heads, int) or num_heads < 1:
                raise ConfigError(f"num_heads={num_heads!r}: expected an integer >= 1")
            sizes = balanced_sizes(num_labels, num_heads)
        else:
            sizes = list(sizes)
            if not sizes or not all(isinstance(s, int) and s >= 1 for s in sizes):
                raise ConfigError(f"sizes={sizes!r}: expected a non-empty list of integers >= 1")
            if num_heads is not None and num_heads != len(sizes):
                raise ConfigError(f"num_heads={num_heads} conflicts with sizes={sizes}: give one of them")
            if math.prod(sizes) < num_labels:
                raise ConfigError(
                    f"sizes={sizes}: product {math.prod(sizes)} < num_labels={num_labels}; "
                    "the product of the head sizes must cover every label"
                )
        self.num_labels = num_labels
        self.sizes: list[int] = sizes
        self.num_heads = len(sizes)
        self.num_codes = math.prod(sizes)
        # stride of digit h = prod(sizes[h+1:]); the last digit has stride 1
        self.strides: list[int] = [math.prod(sizes[h + 1 :]) for h in range(len(sizes))]

    def __repr__(self) -> str:
        return f"MixedRadix(num_labels={self.num_labels}, sizes={self.sizes})"

    def _strides(self, device) -> torch.Tensor:
        return torch.tensor(self.strides, dtype=torch.long, device=device)  # [H]

    def encode(self, labels: torch.Tensor) -> torch.Tensor:
        """LongTensor[...] of labels in [0, num_labels) -> LongTensor[..., H] digits."""
        labels = torch.as_tensor(labels, dtype=torch.long)
        bad = (labels < 0) | (labels >= self.num_labels)
        if bad.any():
            value = labels[bad][0].item()
            raise DataError(f"label {value} out of range: expected labels in [0, {self.num_labels})")
        sizes = torch.tensor(self.sizes, dtype=torch.long, device=labels.device)  # [H]
        return torch.div(labels.unsqueeze(-1), self._strides(labels.device), rounding_mode="floor") % sizes  # [..., H]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """LongTensor[..., H] digits -> LongTensor[...] labels (may be >= num_labels for invalid codes)."""
        codes = torch.as_tensor(codes, dtype=torch.long)
        return (codes * self._strides(codes.device)).sum(-1)  # [...]

    def is_valid(self, codes: torch.Tensor) -> torch.Tensor:
        """BoolTensor[...]: every digit in range and the decoded label < num_labels."""
        codes = torch.as_tensor(codes, dtype=torch.long)
        sizes = torch.tensor(self.sizes, dtype=torch.long, device=codes.device)  # [H]
        in_range = ((codes >= 0) & (codes < sizes)).all(-1)  # [...]
        return in_range & (self.decode(codes.clamp(min=0)) < self.num_labels)


def contiguous_groups(num_labels: int, num_groups: int | None = None, group_size: int | None = None) -> MixedRadix:
    """Contiguous label blocks as a two-digit code (group, position): group(y) = y // group_size.

    MHE rule for a requested `num_groups` G0: per = ceil(C / G0), then G = ceil(C / per), so at most
    the last group is ragged and the waste is < per. With neither option, G0 = round(sqrt(C)).
    """
    if num_groups is not None and group_size is not None:
        raise ConfigError(f"num_groups={num_groups} and group_size={group_size}: give one of them")
    if group_size is None:
        g0 = max(1, round(math.sqrt(num_labels))) if num_groups is None else num_groups
        if not isinstance(g0, int) or not 1 <= g0 <= num_labels:
            raise ConfigError(f"num_groups={num_groups!r}: expected an integer in [1, num_labels={num_labels}]")
        group_size = -(-num_labels // g0)
    elif not isinstance(group_size, int) or not 1 <= group_size <= num_labels:
        raise ConfigError(f"group_size={group_size!r}: expected an integer in [1, num_labels={num_labels}]")
    return MixedRadix(num_labels, sizes=[-(-num_labels // group_size), group_size])


def positive_pairs(
    targets: torch.Tensor, num_labels: int, batch: int, reduction: str = "pal_mean", dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validated targets `[B]` / `[B, M]` (-1 padded) -> (rows [N], labels [N], weights [N]), one per positive.

    Duplicates within a row count once. Weights implement the PAL reduction over a row's positives S:
    `pal_sum` weighs each 1, `pal_mean` 1/|S|, so a head's loss is `sum_n weight_n * loss_n / B`.
    Weights are computed in `dtype` (default: torch's default dtype).
    """
    dtype = dtype or torch.get_default_dtype()
    check_choice("multi_label_loss", reduction, PAL_REDUCTIONS)
    validate_targets(targets, num_labels, batch)
    t = unique_targets(targets)  # [B, M]
    positive = t >= 0  # [B, M]
    rows, cols = positive.nonzero(as_tuple=True)  # [N]
    count = positive.sum(1)  # [B] |S|
    if reduction == "pal_mean":
        weights = 1.0 / count[rows].to(dtype)  # [N]
    else:
        weights = torch.ones(rows.shape[0], dtype=dtype, device=t.device)  # [N]
    return rows, t[rows, cols], weights


__all__ = ["MixedRadix", "balanced_sizes", "contiguous_groups", "positive_pairs"]
