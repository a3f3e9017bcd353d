"""The learning-rate schedule: one multiplier of the configured lr, shared by every optimiser of a run.

    step n < warmup:  (n + 1) / warmup                   linear warmup, never a zero-lr step
    then:             constant  1
                      linear    1 - p                    p = (n - warmup) / (total - warmup), clamped to [0, 1]
                      cosine    (1 + cos(pi p)) / 2

`n` counts optimiser steps (gradient-accumulation boundaries) taken before the current one. The DeepSpeed
engine steps a `LambdaLR` over this function; the optimisers outside the engine (a sharded head's, the
sparse tables') take their lr from the same function at the engine's step count (`xlc.train.step.Step`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

SCHEDULES: dict[str, Callable[[float], float]] = {  # decay after warmup, as a function of p in [0, 1]
    "constant": lambda p: 1.0,
    "linear": lambda p: 1.0 - p,
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
}


def lr_multiplier(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """step -> multiplier of the base lr (see the module docstring)."""
    decay = SCHEDULES[schedule]

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return decay(min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))

    return multiplier


def total_steps(*, epochs: int, rows: int, world: int, batch_size: int, accumulation: int,
                max_steps: int | None) -> int:
    """Optimiser steps of a run: epochs x ceil(rows per rank / batch) micro-batches (capped by `max_steps`,
    which counts micro-batches like the loop does), over `accumulation` micro-batches per optimiser step."""
    micro = epochs * math.ceil(rows // world / batch_size)
    if max_steps is not None:
        micro = min(micro, max_steps)
    return max(1, math.ceil(micro / accumulation))
