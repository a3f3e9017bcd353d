"""Every collective of the heads: the only module under `xlc/heads` that imports torch.distributed.

Holds the group and label-range arithmetic (`resolve_group`, `rank_and_world`, `shard_range`,
`local_rows`), the gathers (rows with two backward rules, targets, small ints), the reductions (plain
in-place sums, sums with an identity or all-reduced backward, the global log-sum-exp), the cross-rank
top-k merge and the `XLC_DEBUG_DIST` check.

Two meanings of `group=None`. Gathers and `merge_topk_across_ranks` take None as the default group
and return their input unchanged on a group of size 1 or without torch.distributed. Reductions take
the group a head resolved (`resolve_group`): None there means one process and no communication.
Collectives are issued in the same order on every rank; a rank that skips one hangs the others, which
is what `XLC_DEBUG_DIST=1` (see `debug_check`) turns into an error before the head's collectives start.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from xlc.errors import ConfigError


def rank_and_world(group=None) -> tuple[int, int]:
    """(rank in `group`, size of `group`); (0, 1) when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def resolve_group(process_group=None) -> tuple[object, int, int]:
    """(group, rank, world) a head talks over: `process_group`, or the default group when None.

    The group is None when it has one rank, so the reductions below skip communication entirely.
    """
    rank, world = rank_and_world(process_group)
    group = (dist.group.WORLD if process_group is None else process_group) if world > 1 else None
    return group, rank, world


def shard_range(num_labels: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous label range [start, end) of `rank`: the first num_labels % world ranks get one extra label."""
    if not 0 <= rank < world:
        raise ConfigError(f"rank={rank}: expected 0 <= rank < world={world}")
    base, extra = divmod(num_labels, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def gather_shapes(local: list[int], group=None, device=None) -> torch.Tensor:
    """All-gather a few small ints per rank -> LongTensor [world, len(local)] (no autograd).

    `device`: where the collective runs (NCCL needs a CUDA tensor); the result is on the CPU.
    """
    mine = torch.tensor(local, dtype=torch.long, device=device)  # [n]
    if rank_and_world(group)[1] == 1:
        return mine[None].cpu()
    out = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, mine, group=group)
    return torch.stack(out).cpu()  # [W, n]


def _gather_padded(x: torch.Tensor, rows: list[int], pad_shape: tuple[int, ...], fill, group) -> list[torch.Tensor]:
    """All-gather `x` padded to `pad_shape` with `fill`; returns each rank's tensor cut back to its rows."""
    padded = x.new_full(pad_shape, fill)
    padded[tuple(slice(0, s) for s in x.shape)] = x
    out = [torch.empty_like(padded) for _ in rows]
    dist.all_gather(out, padded.contiguous(), group=group)
    return [t[:n] for t, n in zip(out, rows)]


def local_rows(rows: list[int], rank: int) -> slice:
    """The slice of the gathered batch holding `rank`'s own rows."""
    start = sum(rows[:rank])
    return slice(start, start + rows[rank])


class _AllGatherRows(torch.autograd.Function):
    """Forward: concatenate every rank's rows in rank order, [B_r, ...] -> [sum_r B_r, ...].

    Backward, `replicated=False`: all-reduce (SUM) the gradient of the gathered rows and keep this
    rank's slice, so each rank gets the sum over ranks of the gradient flowing into its own rows: when
    each rank's loss depends on the gathered rows through its own label shard, that sum is the full
    gradient. `replicated=True`: keep this rank's slice without a collective, for callers whose
    downstream graph is identical on every rank (so each rank already holds the full gradient).
    """

    @staticmethod
    def forward(ctx, x, rows, group, replicated):
        ctx.group, ctx.replicated = group, replicated
        ctx.mine = local_rows(rows, dist.get_rank(group))
        return torch.cat(_gather_padded(x, rows, (max(rows), *x.shape[1:]), 0, group))  # [N, ...]

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()  # [N, ...], this rank's label-shard contribution for every row
        if not ctx.replicated:
            dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.mine], None, None, None


def all_gather_rows(
    x: torch.Tensor, group=None, rows: list[int] | None = None, *, replicated: bool = False
) -> torch.Tensor:
    """Autograd-aware all-gather along dim 0 with unequal (even empty) local sizes; see `_AllGatherRows`.

    `rows`: every rank's size of dim 0 when already known (saves one small collective).
    `replicated`: backward keeps this rank's slice of the gradient without summing it over ranks.
    Every rank must call backward when one does (all ranks agree on `x.requires_grad`).
    """
    if rank_and_world(group)[1] == 1:
        return x
    if rows is None:
        rows = gather_shapes([x.shape[0]], group, x.device)[:, 0].tolist()
    return _AllGatherRows.apply(x, rows, group, replicated)


def all_gather_targets(
    targets: torch.Tensor, group=None, rows: list[int] | None = None, width: int | None = None
) -> torch.Tensor:
    """Gather targets in rank order: `[B_r]` -> `[N]`, or padded `[B_r, M_r]` -> `[N, max_r M_r]` padded with -1.

    `rows` (every rank's B_r) and, for multi-label, `width` (max_r M_r) skip the shape all-gather when known.
    """
    if rank_and_world(group)[1] == 1:
        return targets
    multi = targets.dim() == 2
    if rows is None or (multi and width is None):
        local = [targets.shape[0], targets.shape[1] if multi else 0]
        shapes = gather_shapes(local, group, targets.device)  # [W, 2]
        rows, width = shapes[:, 0].tolist(), int(shapes[:, 1].max())
    pad_shape = (max(rows), width) if multi else (max(rows),)
    return torch.cat(_gather_padded(targets, rows, pad_shape, -1, group))  # [N] or [N, M]


def all_reduce_sum_(t: torch.Tensor, group) -> torch.Tensor:
    """Forward only: sum `t` over `group` in place and return it; a no-op when `group` is None (one process)."""
    if group is not None:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def global_logsumexp(row_max: torch.Tensor, sum_exp: torch.Tensor, group) -> torch.Tensor:
    """Forward only: log sum_j exp(z_j) over all ranks' labels from each rank's (max, sum exp(z - max)) [B]."""
    top = row_max.clone()  # [B]
    if group is not None:
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
    return top + torch.log(all_reduce_sum_(sum_exp * torch.exp(row_max - top), group))  # [B]


class _SumOverRanks(torch.autograd.Function):
    """Forward: all-reduce SUM. Backward: identity, since every rank holds the sum and the same gradient of it."""

    @staticmethod
    def forward(ctx, x, group):
        return all_reduce_sum_(x.clone(), group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def sum_over_ranks(x: torch.Tensor, group) -> torch.Tensor:
    """Sum of every rank's `x` (e.g. its share of a loss), differentiable; see `_SumOverRanks`."""
    return _SumOverRanks.apply(x, group)


class _SumGradOverRanks(torch.autograd.Function):
    """Forward: identity. Backward: all-reduce SUM, for a replicated tensor each rank uses on its own shard only."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return all_reduce_sum_(grad.contiguous().clone(), ctx.group), None


def sum_grad_over_ranks(x: torch.Tensor, group) -> torch.Tensor:
    """`x` unchanged, its gradient summed over ranks in backward; see `_SumGradOverRanks`."""
    return _SumGradOverRanks.apply(x, group)


def merge_topk_across_ranks(
    scores: torch.Tensor, labels: torch.Tensor, k: int, group=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global top-k from every rank's local top-k over the same rows; identical on every rank.

    `scores`, `labels`: [N, k] per rank, descending, equal scores by ascending global label id (pad a
    shard with fewer than k labels with -inf / -1). Ranks hold ascending label ranges, so a stable
    sort of the rank-ordered concatenation keeps that tie rule globally. Forward only (no autograd).
    """
    if rank_and_world(group)[1] > 1:
        world = dist.get_world_size(group)
        all_scores = [torch.empty_like(scores) for _ in range(world)]
        all_labels = [torch.empty_like(labels) for _ in range(world)]
        dist.all_gather(all_scores, scores.contiguous(), group=group)
        dist.all_gather(all_labels, labels.contiguous(), group=group)
        scores, labels = torch.cat(all_scores, 1), torch.cat(all_labels, 1)  # [N, W*k]
    top, pos = scores.sort(dim=1, descending=True, stable=True)  # [N, W*k]
    return top[:, :k], labels.gather(1, pos[:, :k])


def debug_enabled() -> bool:
    return os.environ.get("XLC_DEBUG_DIST", "0") not in ("", "0")


def debug_check(op: str, group=None, *, features=None, targets=None, label_range=None, num_labels=None) -> None:
    """With XLC_DEBUG_DIST=1: gather what each rank is about to do and raise `ConfigError` on every rank on a mismatch.

    Checked: same op, same feature dim / dtype / requires_grad, same target rank (single- vs
    multi-label), feature and target rows equal per rank, label ranges contiguous in rank order and
    covering [0, num_labels). Costs one object all-gather; a no-op when the switch is off.
    """
    rank, world = rank_and_world(group)
    if not debug_enabled() or world == 1:
        return
    mine = {
        "rank": rank,
        "op": op,
        "features": tuple(features.shape) if features is not None else None,
        "dtype": str(features.dtype).removeprefix("torch.") if features is not None else None,
        "grad": features.requires_grad if features is not None else None,
        "targets": tuple(targets.shape) if targets is not None else None,
        "labels": label_range,
        "num_labels": num_labels,
    }
    table = [None] * world
    dist.all_gather_object(table, mine, group=group)
    problems = _mismatches(table)
    if problems:
        cols = list(mine)
        lines = [" | ".join(cols)] + [" | ".join(str(row[c]) for c in cols) for row in table]
        raise ConfigError(f"{op}: ranks disagree ({'; '.join(problems)}); XLC_DEBUG_DIST table:\n" + "\n".join(lines))


def _mismatches(table: list[dict]) -> list[str]:
    problems = []
    for key in ("op", "dtype", "grad", "num_labels"):
        if len({row[key] for row in table}) > 1:
            problems.append(f"{key} differs")
    if len({row["features"][1:] for row in table if row["features"] is not None}) > 1:
        problems.append("feature dims differ")
    if len({len(row["targets"]) for row in table if row["targets"] is not None}) > 1:
        problems.append("targets mix single-label [B] and multi-label [B, M]")
    for row in table:
        feats, targets = row["features"], row["targets"]
        if feats is not None and targets is not None and feats[0] != targets[0]:
            problems.append(f"rank {row['rank']}: {feats[0]} feature rows but {targets[0]} target rows")
    ranges = [row["labels"] for row in table]
    if all(r is not None for r in ranges):
        ends = [0] + [end for _, end in ranges]
        if any(start != ends[r] for r, (start, _) in enumerate(ranges)) or ends[-1] != table[0]["num_labels"]:
            problems.append(f"label ranges {ranges} do not tile [0, {table[0]['num_labels']})")
    return problems


__all__ = [
    "all_gather_rows",
    "all_gather_targets",
    "all_reduce_sum_",
    "debug_check",
    "debug_enabled",
    "gather_shapes",
    "global_logsumexp",
    "local_rows",
    "merge_topk_across_ranks",
    "rank_and_world",
    "resolve_group",
    "shard_range",
    "sum_grad_over_ranks",
    "sum_over_ranks",
]
