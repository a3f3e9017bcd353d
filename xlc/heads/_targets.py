"""What the heads accept and check: target tensors, `k`, option choices, and the loss-reduction names.

Targets are single-label `LongTensor[B]` or multi-label `LongTensor[B, M]` padded with -1.
"""

from __future__ import annotations

import torch

from xlc.errors import ConfigError, DataError

PAL_REDUCTIONS = ("pal_sum", "pal_mean")  # multi-label softmax losses (pick-all-label), `multi_label_loss`
LABEL_REDUCTIONS = ("sum", "mean")  # one-vs-all losses over labels, `label_reduction`


def validate_targets(targets: torch.Tensor, num_labels: int, batch: int) -> None:
    """Raise `DataError` unless targets are long `[B]` or `[B, M]` with values in [-1, num_labels)."""
    if targets.dtype != torch.long or targets.dim() not in (1, 2) or targets.shape[0] != batch:
        raise DataError(
            f"targets: expected a long tensor [B] or [B, M] with B={batch}, got {targets.dtype} {list(targets.shape)}"
        )
    bad = (targets < -1) | (targets >= num_labels)
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise DataError(f"targets row {row}: {targets[row].tolist()} has a label outside [0, {num_labels}) (or -1 padding)")


def unique_targets(targets: torch.Tensor) -> torch.Tensor:
    """`[B]` or `[B, M]` padded targets -> `[B, M]` with each row's duplicate labels replaced by -1."""
    t = targets.view(targets.shape[0], -1).sort(dim=1).values  # [B, M]
    dup = torch.zeros_like(t, dtype=torch.bool)
    dup[:, 1:] = t[:, 1:] == t[:, :-1]
    return t.masked_fill(dup, -1)


def check_k(k: int, num_labels: int) -> None:
    if not 1 <= k <= num_labels:
        raise ConfigError(f"k={k}: expected 1 <= k <= number of labels ({num_labels})")


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
