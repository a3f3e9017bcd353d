"""MHE's Eq. 16 (`mhp` with `rank_form="cp"`): one softmax over the rank-G CP logit tensor, chunked over codes.

For label y with mixed-radix code c = (c_1, ..., c_H) (`codec`), the logit is the CP tensor entry
`z(c) = sum_g prod_h O_g^h[c_h]` and `p(y) = softmax(z)[y]` over the C valid codes (c < num_labels; with
prod L_h = C that is the paper's sigma over the whole tensor). Loss: single-label CE `lse(z) - z_y`, or
pick-all-label (`pal_sum` / `pal_mean`) over a row's positives, both exact.

The chunked kernels of `_chunked` do all the work: the head outputs `[B, G * sum L]` play the features and
a float table of digits `[C, H]` plays the weight, so `cp_logits` builds one `[B, chunk]` block of z at a
time. The loss is an online log-sum-exp over code chunks with backward recomputing each chunk (never
B x C), and `topk` is exact (a running top-k over chunks; ties go to the lower label).
"""

from __future__ import annotations

import functools

import torch

from xlc.heads._chunked import chunked_cross_entropy, chunked_topk, default_chunk
from xlc.heads._targets import validate_targets
from xlc.heads.codec import MixedRadix


def cp_logits(out: torch.Tensor, digits: torch.Tensor, bias: None, *, sizes: list[int], rank: int) -> torch.Tensor:
    """`z [B, c] = sum_g prod_h O_g^h[digits[:, h]]` from `out [B, G * sum L]` and float `digits [c, H]`."""
    index = digits.long()  # [c, H] exact: digits < L_h << 2^24
    z = None
    for h, part in enumerate(out.view(out.shape[0], rank, -1).split(sizes, dim=2)):  # part: [B, G, L_h]
        term = part.index_select(2, index[:, h])  # [B, G, c]
        z = term if z is None else z * term
    return z.sum(1)  # [B, c]


def _operands(codec: MixedRadix, out: torch.Tensor, rank: int, chunk: int | None):
    """(out in >= fp32 `[B, G * sum L]`, digit table `[C, H]` in its dtype, chunk, logit_fn)."""
    if out.dtype in (torch.bfloat16, torch.float16):  # products of logits: keep them in fp32
        out = out.float()
    table = codec.encode(torch.arange(codec.num_labels, device=out.device)).to(out.dtype)  # [C, H]
    # the kernels budget one [B, chunk] block; a chunk here holds ~2H blocks of [B, G, chunk] in backward
    chunk = chunk or default_chunk(out.shape[0] * rank * 2 * codec.num_heads, codec.num_labels, out.device.type)
    return out, table, chunk, functools.partial(cp_logits, sizes=codec.sizes, rank=rank)


def cp_loss(
    codec: MixedRadix, out: torch.Tensor, targets: torch.Tensor, rank: int, chunk: int | None, reduction: str
) -> torch.Tensor:
    """Mean over the batch of `lse_c z(c) - z(y)` (multi-label: PAL `reduction`), `out` the head outputs."""
    validate_targets(targets, codec.num_labels, out.shape[0])
    out, table, chunk, fn = _operands(codec, out, rank, chunk)
    return chunked_cross_entropy(out, table, None, targets, chunk=chunk, logit_fn=fn, reduction=reduction).mean()


@torch.no_grad()
def cp_topk(
    codec: MixedRadix, out: torch.Tensor, k: int, rank: int, chunk: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k labels by CP logit z (scores `[B, k]` are z, descending; the softmax keeps the order)."""
    out, table, chunk, fn = _operands(codec, out, rank, chunk)
    return chunked_topk(out, table, None, k, chunk=chunk, logit_fn=fn)


__all__ = ["cp_logits", "cp_loss", "cp_topk"]
