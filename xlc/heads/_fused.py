"""Fused per-chunk passes of the chunked losses over linear logits, compiled with `torch.compile`.

Eager PyTorch walks each float32 `[B, c]` logit block about eight times per train step (cast, max,
subtract, exp and sum forward; exp, scale, scatter and cast backward), and at 10^6 labels those passes,
not the matmuls, set the step time on a GPU. Compiled, forward reads the matmul's output (in the matmul
dtype) once per statistic, and backward reads it once and writes `dL/dz` once in that dtype. The math
and the float32 accumulation are those of the eager path in `xlc.heads._chunked`:

    forward, per chunk:  m = max_j z_j,  s = sum_j exp(z_j - m)       (ce)    or  sum_j softplus(z_j)  (bce)
    backward, per chunk: dz = g a softmax(z) = g a exp(z - lse)        (ce)    or  g a sigmoid(z)        (bce)

(the `- g c onehot_S` part of `dz` is a scatter on the result, done by the caller).

`enabled(x, logit_fn)`: used for the linear logit function on CUDA; `XLC_FUSED_CHUNKS=1` forces it on any
device (tests compile it on the CPU), `=0` turns it off.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F


def enabled(x: torch.Tensor, linear: bool) -> bool:
    """Whether the fused passes serve a chunked loss on `x` with the linear logit function (`linear`)."""
    mode = os.environ.get("XLC_FUSED_CHUNKS", "auto")
    if mode not in ("auto", "0", "1"):
        raise ValueError(f"XLC_FUSED_CHUNKS={mode!r}: expected auto, 0 or 1")
    return linear and (mode == "1" or (mode == "auto" and x.is_cuda))


def _compiled_on_first_call(fn):
    """`fn`, compiled by `torch.compile` when first called (importing the heads must not pay for it)."""
    build = functools.cache(lambda: torch.compile(fn, dynamic=None))

    @functools.wraps(fn)
    def call(*args):
        return build()(*args)

    return call


@_compiled_on_first_call
def ce_stats(z: torch.Tensor, acc: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(row max `[B]`, sum of exp(z - max) `[B]`) of a logit block `z [B, c]`, in `acc`."""
    zf = z.to(acc)
    m = zf.amax(1)
    return m, (zf - m[:, None]).exp().sum(1)


@_compiled_on_first_call
def softplus_sum(z: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """sum_j softplus(z_j) `[B]` of a logit block `z [B, c]`, in `acc`."""
    return F.softplus(z.to(acc)).sum(1)


@_compiled_on_first_call
def ce_grad(z: torch.Tensor, lse: torch.Tensor, ga: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """`ga * exp(z - lse)` `[B, c]` in z's dtype, computed in `acc`; `lse [B]`, `ga [B, 1]`."""
    return ((z.to(acc) - lse[:, None]).exp() * ga).to(z.dtype)


@_compiled_on_first_call
def bce_grad(z: torch.Tensor, ga: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """`ga * sigmoid(z)` `[B, c]` in z's dtype, computed in `acc`; `ga [B, 1]`."""
    return (torch.sigmoid(z.to(acc)) * ga).to(z.dtype)
