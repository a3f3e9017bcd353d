"""Benchmark of the model-parallel heads on 1..W gloo ranks (spawned CPU processes): time, memory and traffic per step.

    python -m xlc.bench.sharded --heads sharded_softmax,sharded_softmax:sample_rate=0.1,sharded_bce,mhc_sharded \
        --labels 1e5,1e6 --batch 256 --dim 128 --world 1,2

A head spec is `name[:option=value...]` (values parsed as JSON, else kept as strings). The global batch is
fixed and split across ranks (strong scaling), single-label random targets. Per head x labels x world:
- `step_ms`: median over `repeats` (after one warm-up) of `loss(x, y).backward()` on every rank, timed
  between barriers, so it is the slowest rank's time; weight and feature gradients are cleared to None.
- `param_bytes`: this rank's head parameters; `peak_step_bytes`: growth of the rank's peak RSS over the
  timed steps (`PeakMemory`: gradients, logits chunks, gathered features); both are the max over ranks,
  and their sum is the classifier memory per rank.
- `comm_bytes`: bytes one rank sends per step, counted by wrapping `torch.distributed.all_reduce` /
  `all_gather` during the step and charging the ring-algorithm cost: an all-reduce of S bytes sends
  2 (W - 1) / W * S, an all-gather of S bytes per rank sends (W - 1) * S (max over ranks).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import statistics
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from xlc.bench.heads import PeakMemory, _label_counts, print_rows, row_printer
from xlc.errors import ConfigError
from xlc.heads import HEADS, build_head
from xlc.heads._dist import shard_range

DEFAULT_HEADS = "sharded_softmax,sharded_softmax:sample_rate=0.1,sharded_bce,mhc_sharded:group_size=100:hidden=128"


def parse_spec(spec: str) -> tuple[str, dict]:
    """`name:opt=value:...` -> (name, options); unknown names raise `ConfigError` listing the heads."""
    name, *parts = spec.split(":")
    if name not in HEADS:
        raise ConfigError(f"--heads: {name!r} unknown; expected one of {', '.join(sorted(HEADS))}")
    options = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(f"--heads: {spec!r}: expected name:option=value, got {part!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return name, options


class CommCounter:
    """Counts the bytes this rank sends through `dist.all_reduce` / `dist.all_gather` while `active`."""

    def __init__(self, world: int):
        self.world, self.active, self.bytes = world, False, 0
        for op, cost in (("all_reduce", 2 * (world - 1) / world), ("all_gather", world - 1)):
            setattr(dist, op, self._wrap(getattr(dist, op), cost, op))

    def _wrap(self, fn, cost: float, op: str):
        @functools.wraps(fn)
        def counted(*args, **kwargs):
            if self.active:
                tensor = args[1] if op == "all_gather" else args[0]  # all_gather(out_list, tensor, ...)
                self.bytes += int(cost * tensor.numel() * tensor.element_size())
            return fn(*args, **kwargs)

        return counted


def _bench_rank(spec: str, num_labels: int, batch: int, dim: int, repeats: int, counter: CommCounter) -> dict:
    rank, world = dist.get_rank(), dist.get_world_size()
    name, options = parse_spec(spec)
    try:
        torch.manual_seed(0)
        head = build_head(name, num_labels, dim, **options)
    except ConfigError as e:
        return {"skipped": str(e)}
    gen = torch.Generator().manual_seed(1)
    x_all = torch.randn(batch, dim, generator=gen)  # [B, d] the global batch, split across ranks
    y_all = torch.randint(num_labels, (batch,), generator=gen)  # [B]
    lo, hi = shard_range(batch, rank, world)
    x, y = x_all[lo:hi].clone().requires_grad_(True), y_all[lo:hi].clone()
    del x_all, y_all

    def step():
        head.zero_grad(set_to_none=True)
        x.grad = None
        head.loss(x, y).backward()

    step()  # warm-up
    head.zero_grad(set_to_none=True)
    x.grad = None
    times, counter.bytes = [], 0
    with PeakMemory(torch.device("cpu")) as mem:
        for _ in range(repeats):
            dist.barrier()
            start = time.perf_counter()
            counter.active = True
            step()
            counter.active = False
            dist.barrier()
            times.append((time.perf_counter() - start) * 1e3)
    return {
        "step_ms": statistics.median(times),
        "param_bytes": sum(p.numel() * p.element_size() for p in head.parameters()),
        "peak_step_bytes": mem.peak,
        "comm_bytes": counter.bytes // repeats,
    }


def _rank_main(rank, world, port, specs, label_counts, batch, dim, repeats, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # one core per rank: ranks stand for separate devices
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        counter = CommCounter(world)
        for num_labels in label_counts:
            for spec in specs:
                mine = _bench_rank(spec, num_labels, batch, dim, repeats, counter)
                everyone = [None] * world
                dist.all_gather_object(everyone, mine)
                if rank == 0:
                    results.put(("row", _combine(spec, num_labels, batch, dim, world, everyone)))
    except BaseException:
        results.put(("error", f"rank {rank}:\n{traceback.format_exc()}"))
        raise
    finally:
        dist.destroy_process_group()


def _combine(spec, num_labels, batch, dim, world, per_rank: list[dict]) -> dict:
    row = {"head": spec, "labels": num_labels, "batch": batch, "dim": dim, "world": world}
    if "skipped" in per_rank[0]:
        return row | {"skipped": per_rank[0]["skipped"]}
    peaks = [r["peak_step_bytes"] for r in per_rank]
    return row | {
        "step_ms": max(r["step_ms"] for r in per_rank),
        "param_bytes": max(r["param_bytes"] for r in per_rank),
        "peak_step_bytes": None if None in peaks else max(peaks),
        "comm_bytes": max(r["comm_bytes"] for r in per_rank),
        "skipped": None,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(specs, label_counts, batch, dim, worlds, repeats=3, progress=None) -> list[dict]:
    """One row per world x label count x head spec (see the module docstring)."""
    for spec in specs:
        parse_spec(spec)
    if any(w < 1 for w in worlds):
        raise ConfigError(f"--world={worlds}: expected world sizes >= 1")
    rows = []
    for world in worlds:
        rows += run_ranks(world, _rank_main, (specs, label_counts, batch, dim, repeats), len(specs) * len(label_counts),
                          progress)
    return rows


def run_ranks(world: int, target, args: tuple, num_rows: int, progress=None) -> list[dict]:
    """Spawn `world` gloo ranks running `target(rank, world, port, *args, results)` and collect the `num_rows`
    rows rank 0 puts on `results` as ("row", row); a rank's ("error", traceback) kills them all and raises."""
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    port = _free_port()
    procs = [ctx.Process(target=target, args=(r, world, port, *args, results)) for r in range(world)]
    for p in procs:
        p.start()
    rows = []
    for _ in range(num_rows):
        kind, value = results.get()
        if kind == "error":
            for p in procs:
                p.kill()
            raise RuntimeError(f"benchmark rank failed: {value}")
        rows.append(value)
        if progress:
            progress(value)
    for p in procs:
        p.join()
    return rows


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.1f}"


def format_table(rows: list[dict]) -> str:
    lines = [
        "| head | labels | world | step (ms) | params/rank (MiB) | peak step/rank (MiB) | classifier/rank (MiB) "
        "| sent/rank/step (KiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['head']} | {r['labels']:,} | {r['world']} | skipped: {r['skipped']} | | | | |")
            continue
        total = None if r["peak_step_bytes"] is None else r["param_bytes"] + r["peak_step_bytes"]
        lines.append(
            f"| {r['head']} | {r['labels']:,} | {r['world']} | {r['step_ms']:.1f} | {_mib(r['param_bytes'])} "
            f"| {_mib(r['peak_step_bytes'])} | {_mib(total)} | {r['comm_bytes'] / 2**10:,.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xlc bench sharded", description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", default=DEFAULT_HEADS, help="comma-separated name[:option=value...] specs")
    parser.add_argument("--labels", default="1e5,1e6", help="comma-separated label counts")
    parser.add_argument("--batch", type=int, default=256, help="global batch, split across ranks")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--world", default="1,2", help="comma-separated gloo world sizes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON line after the table")
    args = parser.parse_args(argv)
    try:
        worlds = [int(w) for w in args.world.split(",") if w]
    except ValueError:
        raise ConfigError(f"--world={args.world!r}: expected comma-separated integers such as 1,2") from None
    rows = run(
        [s for s in args.heads.split(",") if s], _label_counts(args.labels), args.batch, args.dim, worlds,
        args.repeats, progress=row_printer(format_table),
    )
    return print_rows(rows, format_table, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
