"""The chunked kernels: exact, memory-bounded linear-classifier losses and top-k, chunked over labels.

A weight `[C_local, d]` (+ optional bias `[C_local]`) scores a batch `x [B, d]` one label chunk at a
time, so no more than `B x chunk` logits ever exist (plus a few same-sized temporaries in backward).
Forward keeps an online log-sum-exp (running max, rescaled sum-exp); backward recomputes each chunk's
logits and pushes `dL/dz` through them with `torch.autograd.grad`, so any `logit_fn` (linear, RBF, ...)
gets exact gradients without storing logits.

Sharding (Megatron vocab-parallel CE / Partial FC): `weight[0]` has global id `label_offset`; targets
are global ids and only the owner of a target contributes its logit. With `group`, the row max is
all-reduced (MAX) and the sum-exp and picked target logits (SUM) through `_dist`, so every rank
returns the loss over the union of the shards. Backward needs no collective: `dW`, `db` are the rank's
own rows, and `dX` is this rank's partial sum, which the caller reduces through its own autograd gather.

Dtypes: for bf16/fp16 `x` the matmul runs in `x.dtype` (tensor cores) and the logits and every sum
over labels are float32; otherwise the matmul runs in `promote(x.dtype, weight.dtype)`.

Speed: with the linear logit function on CUDA, the per-chunk passes over the logit block are compiled
(`xlc.heads._fused`): same math, the block kept in the matmul dtype, 1.3-1.7x faster train steps at
10^6-10^7 labels on an H200 (docs/benchmarks.md, "GPU check").
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from xlc.heads import _fused
from xlc.heads._dist import all_reduce_sum_, global_logsumexp
from xlc.heads._targets import LABEL_REDUCTIONS, PAL_REDUCTIONS, check_choice, check_k, unique_targets

LogitFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]

# Bytes of one fp32 [B, chunk] logit block; backward holds about three such blocks at once.
# CPU: 16 MiB (B=256 -> 16384 labels), under glibc's 32 MiB mmap threshold, so freed blocks are reused
# instead of page-faulted in again: 1.3x faster than 64 MiB blocks at 262k labels, B=d=256 (2-core CPU).
# CUDA: 128 MiB (B=256 -> 131072 labels): fewer, larger matmuls; the caching allocator reuses blocks.
CHUNK_BYTES = {"cpu": 16 * 2**20, "cuda": 128 * 2**20}


def default_chunk(batch: int, num_labels: int, device_type: str = "cpu") -> int:
    """Labels per chunk so that one fp32 `[batch, chunk]` block stays about `CHUNK_BYTES[device_type]`."""
    budget = CHUNK_BYTES.get(device_type, CHUNK_BYTES["cuda"])
    return max(1, min(num_labels, budget // (4 * max(batch, 1))))


def linear_logits(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """The default `logit_fn`: `x @ w.T + b`."""
    return x @ w.T if b is None else torch.addmm(b, x, w.T)  # [B, c]


def compute_dtypes(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(matmul dtype, accumulation dtype) for inputs `x` and parameters `weight`."""
    if x.dtype in (torch.bfloat16, torch.float16):
        return x.dtype, torch.float32
    cd = torch.promote_types(x.dtype, weight.dtype)
    return cd, torch.promote_types(cd, torch.float32)


def chunk_ranges(num_labels: int, chunk: int) -> Iterator[tuple[int, int]]:
    """[lo, hi) ranges of at most `chunk` covering [0, num_labels) in order."""
    for lo in range(0, num_labels, chunk):
        yield lo, min(lo + chunk, num_labels)


def _chunk_logits(x, w, b, cd, acc, logit_fn) -> torch.Tensor:
    return logit_fn(x.to(cd), w.to(cd), None if b is None else b.to(cd)).to(acc)  # [B, c]


def _in_chunk(local: torch.Tensor, lo: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Column index into the chunk [lo, lo + size) for each target (clamped) and whether it is inside."""
    idx = local - lo  # [B, M]
    inside = (idx >= 0) & (idx < size)
    return idx.clamp(0, size - 1), inside


class _ChunkedLoss(torch.autograd.Function):
    """Per-row `a * R(z) - c * sum_{k in S} z_k` with R = logsumexp ("ce") or sum softplus ("bce").

    dL/dz = g * (a * f(z) - c * onehot_S) with f = softmax or sigmoid: one backward for both losses.
    With `group`, forward sums the per-shard statistics over ranks (`_dist`); backward is local.
    `exclude` ("ce" only): R runs over the labels outside S (their logits count as -inf), and dL/dz_S = 0.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, local, a, c, kind, chunk, group, logit_fn, exclude=False):
        assert kind == "ce" or not exclude, kind
        cd, acc = compute_dtypes(x, weight)
        fused = _fused.enabled(x, logit_fn is linear_logits) and not exclude
        batch = x.shape[0]
        picked = torch.zeros(batch, dtype=acc, device=x.device)  # [B] sum of own target logits
        row_max = torch.full((batch,), -torch.inf, dtype=acc, device=x.device)  # [B]
        total = torch.zeros(batch, dtype=acc, device=x.device)  # [B] sum-exp (ce) or sum softplus (bce)
        for lo, hi in chunk_ranges(weight.shape[0], chunk):
            b = None if bias is None else bias[lo:hi]
            # fused: the block stays in the matmul dtype and is read by compiled reductions
            z = linear_logits(x.to(cd), weight[lo:hi].to(cd), None if b is None else b.to(cd)) if fused else \
                _chunk_logits(x, weight[lo:hi], b, cd, acc, logit_fn)  # [B, c]
            idx, inside = _in_chunk(local, lo, hi - lo)
            picked += torch.where(inside, z.gather(1, idx).to(acc), 0).sum(1)
            if exclude:
                z.index_put_(_target_cells(idx, inside), torch.tensor(-torch.inf, dtype=z.dtype, device=z.device))
            if kind == "ce":
                if fused:
                    chunk_max, chunk_sum = _fused.ce_stats(z, acc)  # [B], [B]
                else:
                    chunk_max = z.max(dim=1).values  # [B]
                # finite floor: a row whose logits so far are all excluded (-inf) must not give exp(-inf + inf)
                new_max = torch.maximum(row_max, chunk_max).clamp(min=torch.finfo(acc).min)
                if fused:
                    total = total * torch.exp(row_max - new_max) + chunk_sum * torch.exp(chunk_max - new_max)
                else:
                    total = total * torch.exp(row_max - new_max) + (z - new_max[:, None]).exp_().sum(1)
                row_max = new_max
            else:
                total += _fused.softplus_sum(z, acc) if fused else F.softplus(z).sum(1)
        if kind == "ce":
            lse = global_logsumexp(row_max, total, group)  # [B]
            loss = a * lse - c * all_reduce_sum_(picked, group)
        else:
            lse = None
            loss = all_reduce_sum_(a * total - c * picked, group)
        ctx.save_for_backward(x, weight, bias, local, a, c, lse)
        ctx.kind, ctx.chunk, ctx.logit_fn, ctx.fused, ctx.exclude = kind, chunk, logit_fn, fused, exclude
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, bias, local, a, c, lse = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        cd, acc = compute_dtypes(x, weight)
        grad = grad.to(acc)
        ga, gc = (grad * a)[:, None], (grad * c)[:, None]  # [B, 1]
        dx = torch.zeros(x.shape, dtype=acc, device=x.device) if need_x else None  # [B, d]
        dw = torch.zeros_like(weight) if need_w else None  # [C_local, d]
        db = torch.zeros_like(bias) if need_b else None  # [C_local]
        if ctx.fused:
            _fused_backward(x, weight, bias, local, lse, ga, gc, ctx.kind, ctx.chunk, dx, dw, db)
            return None if dx is None else dx.to(x.dtype), dw, db, None, None, None, None, None, None, None, None
        x_leaf = x.detach().requires_grad_(need_x)
        for lo, hi in chunk_ranges(weight.shape[0], ctx.chunk):
            w_leaf = weight[lo:hi].detach().requires_grad_(need_w)
            b_leaf = None if bias is None else bias[lo:hi].detach().requires_grad_(need_b)
            with torch.enable_grad():
                z = _chunk_logits(x_leaf, w_leaf, b_leaf, cd, acc, ctx.logit_fn)  # [B, c]
            # softmax or sigmoid, then scaled in place: one [B, c] temporary besides z
            dz = (z.detach() - lse[:, None]).exp_() if ctx.kind == "ce" else torch.sigmoid(z.detach())  # [B, c]
            dz.mul_(ga)
            idx, inside = _in_chunk(local, lo, hi - lo)
            if ctx.exclude:
                dz.index_put_(_target_cells(idx, inside), torch.zeros((), dtype=dz.dtype, device=dz.device))
            dz.scatter_add_(1, idx, torch.where(inside, -gc, 0))
            leaves = [t for t, need in ((x_leaf, need_x), (w_leaf, need_w), (b_leaf, need_b)) if need]
            grads = iter(torch.autograd.grad(z, leaves, dz))
            if need_x:
                dx += next(grads)
            if need_w:
                dw[lo:hi] = next(grads)
            if need_b:
                db[lo:hi] = next(grads)
        dx = None if dx is None else dx.to(x.dtype)
        return dx, dw, db, None, None, None, None, None, None, None, None


def _target_cells(idx: torch.Tensor, inside: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns) of the chunk cells holding a target, from `_in_chunk`'s `idx`, `inside` [B, M]."""
    rows, slots = inside.nonzero(as_tuple=True)  # [P], [P]
    return rows, idx[rows, slots]


def _fused_backward(x, weight, bias, local, lse, ga, gc, kind, chunk, dx, dw, db) -> None:
    """`_ChunkedLoss.backward` for linear logits, into `dx`, `dw`, `db` (each None when not needed): per
    chunk, `dz` from one compiled pass in the matmul dtype, then the three matmuls of a linear layer."""
    cd, acc = compute_dtypes(x, weight)
    xc = x.to(cd)  # [B, d]
    for lo, hi in chunk_ranges(weight.shape[0], chunk):
        w = weight[lo:hi].to(cd)  # [c, d]
        z = linear_logits(xc, w, None if bias is None else bias[lo:hi].to(cd))  # [B, c]
        dz = _fused.ce_grad(z, lse, ga, acc) if kind == "ce" else _fused.bce_grad(z, ga, acc)  # [B, c]
        del z
        idx, inside = _in_chunk(local, lo, hi - lo)
        dz.scatter_add_(1, idx, torch.where(inside, -gc, 0).to(dz.dtype))
        if dx is not None:
            dx += dz @ w
        if dw is not None:
            dw[lo:hi] = dz.T @ xc
        if db is not None:
            db[lo:hi] = dz.sum(0, dtype=acc)


def _local_targets(targets: torch.Tensor, label_offset: int) -> torch.Tensor:
    t = unique_targets(targets)  # [B, M]
    return torch.where(t >= 0, t - label_offset, -1)


def chunked_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    chunk: int | None = None,
    label_offset: int = 0,
    group=None,
    logit_fn: LogitFn | None = None,
    reduction: str = "pal_mean",
) -> torch.Tensor:
    """Per-row softmax cross-entropy `[B]` over all labels (all ranks' shards when `group` is given).

    Single-label `targets [B]`: `lse(z) - z_y`. Multi-label `[B, M]` padded with -1, S = the row's
    distinct labels: `pal_sum` = `sum_{k in S} (lse(z) - z_k)`, `pal_mean` = the same divided by |S|.
    A row with no label (all -1) gives 0 and a zero gradient; it still counts in a caller's batch mean.
    """
    check_choice("multi_label_loss", reduction, PAL_REDUCTIONS)
    _, acc = compute_dtypes(x, weight)
    local = _local_targets(targets, label_offset)  # [B, M]
    n = (unique_targets(targets) >= 0).sum(1).to(acc)  # [B] |S|, the same on every rank
    if reduction == "pal_sum":
        a, c = n, torch.ones_like(n)
    else:
        a, c = (n > 0).to(acc), torch.where(n > 0, 1 / n.clamp(min=1), 0)
    chunk = chunk or default_chunk(x.shape[0], weight.shape[0], x.device.type)
    return _ChunkedLoss.apply(x, weight, bias, local, a, c, "ce", chunk, group, logit_fn or linear_logits)


def chunked_logsumexp_excluding_targets(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                        targets: torch.Tensor, *, chunk: int | None = None, label_offset: int = 0,
                                        group=None, logit_fn: LogitFn | None = None) -> torch.Tensor:
    """`log sum_{j not in S_i} exp(z_ij)` `[B]` over all labels of all shards but the row's targets S_i,
    differentiable in `x`, `weight`, `bias` (the margin losses add the target term themselves, `_margin`)."""
    _, acc = compute_dtypes(x, weight)
    ones = torch.ones(x.shape[0], dtype=acc, device=x.device)  # [B]
    chunk = chunk or default_chunk(x.shape[0], weight.shape[0], x.device.type)
    return _ChunkedLoss.apply(x, weight, bias, _local_targets(targets, label_offset), ones, torch.zeros_like(ones),
                              "ce", chunk, group, logit_fn or linear_logits, True)


def chunked_bce(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    chunk: int | None = None,
    label_offset: int = 0,
    group=None,
    logit_fn: LogitFn | None = None,
    label_reduction: str = "sum",
) -> torch.Tensor:
    """Per-row one-vs-all loss `[B]`: `sum_j BCEWithLogits(z_j, y_j)` over all labels of all shards.

    `y` is the row's multi-hot (single-label targets: one-hot; -1 padding: none), built per chunk.
    `label_reduction="mean"` divides by the total number of labels (the sum of `C_local` over the group).
    Written as `sum_j softplus(z_j) - sum_{k in S} z_k`, which equals BCE with logits exactly.
    """
    check_choice("label_reduction", label_reduction, LABEL_REDUCTIONS)
    _, acc = compute_dtypes(x, weight)
    scale = torch.ones(x.shape[0], dtype=acc, device=x.device)  # [B]
    if label_reduction == "mean":
        total = all_reduce_sum_(torch.tensor(float(weight.shape[0]), dtype=acc, device=x.device), group)
        scale = scale / total
    chunk = chunk or default_chunk(x.shape[0], weight.shape[0], x.device.type)
    local = _local_targets(targets, label_offset)  # [B, M]
    return _ChunkedLoss.apply(x, weight, bias, local, scale, scale, "bce", chunk, group, logit_fn or linear_logits)


def topk_lowest_index(z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of `z [B, c]` along dim 1 ordered by (score desc, index asc); ties never depend on the kernel."""
    kth = z.topk(k, dim=1).values[:, -1:]  # [B, 1]
    above = z > kth  # [B, c]
    tie = z == kth  # [B, c]
    free = k - above.sum(1, keepdim=True)  # [B, 1] slots left for scores equal to the k-th
    if (tie.sum(1, keepdim=True) > free).any():  # rare outside tests; the cumsum is an int64 [B, c]
        tie &= tie.cumsum(1) <= free
    take = above | tie  # [B, c] exactly k per row, lowest indices among ties
    idx = take.nonzero()[:, 1].view(z.shape[0], k)  # [B, k] ascending index
    scores, order = z.gather(1, idx).sort(dim=1, descending=True, stable=True)
    return scores, idx.gather(1, order)


def update_running_topk(
    scores: torch.Tensor, labels: torch.Tensor, chunk_scores: torch.Tensor, chunk_labels: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A running top-k `[B, <=k]` merged with a new chunk's candidates `[B, k']` (labels disjoint from it).

    Returns the top-k of the union, `[B, min(k, <=k + k')]`, ties broken by the lower label.
    """
    labels, perm = torch.cat([labels, chunk_labels], dim=1).sort(dim=1)  # [B, <=k + k']
    scores = torch.cat([scores, chunk_scores], dim=1).gather(1, perm)
    scores, order = scores.sort(dim=1, descending=True, stable=True)
    return scores[:, :k], labels.gather(1, order[:, :k])


@torch.no_grad()
def chunked_topk(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    k: int,
    *,
    chunk: int | None = None,
    label_offset: int = 0,
    logit_fn: LogitFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k (scores `[B, k]` descending, global labels `[B, k]`) of the logits over this shard.

    Ties are broken by the lower label id, so the result matches `topk_lowest_index` of the full logits.
    """
    check_k(k, weight.shape[0])
    cd, acc = compute_dtypes(x, weight)
    logit_fn = logit_fn or linear_logits
    chunk = chunk or default_chunk(x.shape[0], weight.shape[0], x.device.type)
    scores = torch.empty(x.shape[0], 0, dtype=acc, device=x.device)  # [B, <=k]
    labels = torch.empty(x.shape[0], 0, dtype=torch.long, device=x.device)  # [B, <=k]
    for lo, hi in chunk_ranges(weight.shape[0], chunk):
        z = _chunk_logits(x, weight[lo:hi], None if bias is None else bias[lo:hi], cd, acc, logit_fn)  # [B, c]
        s, i = topk_lowest_index(z, min(k, hi - lo))  # [B, k']
        scores, labels = update_running_topk(scores, labels, s, i + (lo + label_offset), k)
    return scores, labels


class _GatheredDot(torch.autograd.Function):
    """z[p] = table[index[p]] . x[rows[p]]  [P], over chunks of P so that at most `chunk` gathered rows exist.

    Backward: d table[index[p]] += dz[p] x[rows[p]] and d x[rows[p]] += dz[p] table[index[p]], by `index_add_`
    per chunk (repeated indices accumulate). The MHC heads score 10^4 candidate labels per row this way: a
    `[B, N, hidden]` gather of their table rows would be gigabytes at 10^6 labels.
    """

    @staticmethod
    def forward(ctx, table, x, index, rows, chunk):
        dtype = torch.promote_types(table.dtype, x.dtype)
        z = torch.empty(len(index), dtype=dtype, device=x.device)  # [P]
        for lo in range(0, len(index), chunk):
            z[lo : lo + chunk] = (table[index[lo : lo + chunk]] * x[rows[lo : lo + chunk]]).sum(1)
        ctx.save_for_backward(table, x, index, rows)
        ctx.chunk = chunk
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx, dz):
        table, x, index, rows = ctx.saved_tensors
        d_table = torch.zeros_like(table) if ctx.needs_input_grad[0] else None
        d_x = torch.zeros_like(x) if ctx.needs_input_grad[1] else None
        for lo in range(0, len(index), ctx.chunk):
            i, r, g = index[lo : lo + ctx.chunk], rows[lo : lo + ctx.chunk], dz[lo : lo + ctx.chunk, None]
            if d_table is not None:
                d_table.index_add_(0, i, (g * x[r]).to(table.dtype))
            if d_x is not None:
                d_x.index_add_(0, r, (g * table[i]).to(x.dtype))
        return d_table, d_x, None, None, None


def gathered_dot(table: torch.Tensor, x: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`(table[index] * x[rows]).sum(1)` [P] with gradients to `table` and `x`, in memory-bounded chunks."""
    chunk = max(1, CHUNK_BYTES[x.device.type] // 4 // max(table.shape[1], 1))
    return _GatheredDot.apply(table, x, index, rows, chunk)


def row_dot(table: torch.Tensor, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Candidate logits `[B, N]`: table[labels[b, n]] . x[b] for labels `[B, N]`, via `gathered_dot`."""
    rows = torch.arange(labels.shape[0], device=labels.device).repeat_interleave(labels.shape[1])  # [B * N]
    return gathered_dot(table, x, labels.reshape(-1), rows).view(labels.shape)
