"""Benchmark of the training step (`xlc.train.step.Step`: DeepSpeed engine, heads, optimisers) on W gloo ranks.

    xlc bench train --features 1e4,1e5 --labels 1000 --head softmax --hidden 256 --world 2 --grad sparse,dense

Each rank is a spawned CPU process with one thread (ranks stand for separate devices), running the same
`Step` as a Ray worker on synthetic batches: `nnz` features per row drawn from a Zipf(1.1) law over the
feature ids (tf-idf rows are head-heavy too), values 1/sqrt(nnz), uniform labels. Per row of the table:
`samples_per_s` = global batch x timed steps / wall seconds (after `warmup` steps), and the milliseconds per
step spent in each phase (forward, head loss, backward, gradient all-reduce, optimiser steps), the
mean over ranks; a replicated head's loss runs in the engine's forward and is timed there (`head`: a sharded
head's loss). `--grad dense` turns the `mlp` input table's sparse gradient off (the pre-remedy step).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import traceback

import torch
import torch.distributed as dist

from xlc import config as xconfig
from xlc.bench.heads import _label_counts, print_rows, row_printer
from xlc.bench.sharded import run_ranks
from xlc.data.collate import Batch
from xlc.data.schema import DatasetMeta
from xlc.errors import ConfigError
from xlc.train import engine as xengine
from xlc.train.model import build_model
from xlc.train.step import PHASES, PhaseTimer, Step

GRADS = ("sparse", "dense")


def synthetic_batch(gen: torch.Generator, batch: int, nnz: int, num_features: int, num_labels: int) -> Batch:
    """`batch` rows of `nnz` Zipf(1.1)-distributed feature ids (with repeats) and one uniform label each."""
    ranks = torch.arange(1, num_features + 1, dtype=torch.float64)
    idx = torch.multinomial(ranks.pow(-1.1), batch * nnz, replacement=True, generator=gen)  # [B * nnz]
    return Batch(
        targets=torch.randint(num_labels, (batch,), generator=gen),
        feat_idx=idx, feat_offsets=torch.arange(batch) * nnz,
        feat_val=torch.full((batch * nnz,), nnz**-0.5),
    )


def _bench_rank(case: dict, steps: int, warmup: int) -> dict:
    rank, world = dist.get_rank(), dist.get_world_size()
    meta = DatasetMeta(name="bench", num_labels=case["labels"], multi_label=False, num_features=case["features"])
    cfg = xconfig.from_dict({
        "name": "bench", "data": "unused",
        "backbone": {"name": "mlp", "hidden": case["hidden"], "dropout": 0.0,
                     "options": {"sparse_grad": case["grad"] == "sparse"}},
        "head": {"name": case["head"]},
        "train": {"batch_size": case["batch"]},
    })
    torch.manual_seed(0)
    model, head = build_model(cfg, meta)
    ds_config = xengine.deepspeed_config(None, batch_size=case["batch"], lr=1e-3, weight_decay=0.0,
                                         clip_grad_norm=cfg.train.clip_grad_norm)
    step = Step(model, head, ds_config, lr=1e-3, head_lr=1e-3, weight_decay=0.0, world=world)
    gen = torch.Generator().manual_seed(rank)
    batches = [synthetic_batch(gen, case["batch"], case["nnz"], case["features"], case["labels"]) for _ in range(4)]
    for i in range(warmup):
        step.step(batches[i % len(batches)])
    timer = PhaseTimer(torch.device("cpu"))
    dist.barrier()
    start = time.perf_counter()
    for i in range(steps):
        step.step(batches[i % len(batches)], timer)
    dist.barrier()
    return {"seconds": time.perf_counter() - start, **{p: timer.seconds[p] for p in PHASES}}


def _rank_main(rank, world, port, cases, steps, warmup, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank), RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    xengine.select_accelerator(use_gpu=False)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for case in cases:
            mine = _bench_rank(case, steps, warmup)
            everyone = [None] * world
            dist.all_gather_object(everyone, mine)
            if rank == 0:
                seconds = max(r["seconds"] for r in everyone)
                results.put(("row", case | {
                    "world": world, "samples_per_s": case["batch"] * world * steps / seconds,
                    **{f"{p}_ms": 1e3 * statistics.mean(r[p] for r in everyone) / steps for p in PHASES},
                }))
    except BaseException:
        results.put(("error", f"rank {rank}:\n{traceback.format_exc()}"))
        raise
    finally:
        dist.destroy_process_group()


def run(cases: list[dict], world: int, steps: int, warmup: int, progress=None) -> list[dict]:
    """One row per case (see the module docstring), all on one set of `world` ranks."""
    if world < 1 or steps < 1:
        raise ConfigError(f"--world={world}, --steps={steps}: expected positive integers")
    return run_ranks(world, _rank_main, (cases, steps, warmup), len(cases), progress)


def format_table(rows: list[dict]) -> str:
    head = " | ".join(f"{p} (ms)" for p in PHASES)
    lines = [f"| features | labels | head | grad | world | samples/s | {head} |",
             "|---:|---:|---|---|---:|---:|" + "---:|" * len(PHASES)]
    for r in rows:
        phases = " | ".join(f"{r[f'{p}_ms']:.1f}" for p in PHASES)
        lines.append(f"| {r['features']:,} | {r['labels']:,} | {r['head']} | {r['grad']} | {r['world']} "
                     f"| {r['samples_per_s']:,.0f} | {phases} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xlc bench train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", default="1e4,1e5", help="comma-separated input feature counts")
    parser.add_argument("--labels", default="1000", help="comma-separated label counts")
    parser.add_argument("--head", default="softmax", help="comma-separated head names")
    parser.add_argument("--grad", default="sparse,dense", help="input-table gradient: sparse, dense or both")
    parser.add_argument("--hidden", default="256", help="comma-separated MLP widths, e.g. 512,256")
    parser.add_argument("--batch", type=int, default=256, help="per-rank micro-batch")
    parser.add_argument("--nnz", type=int, default=64, help="features per row")
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON line after the table")
    args = parser.parse_args(argv)
    grads = [g for g in args.grad.split(",") if g]
    if not grads or set(grads) - set(GRADS):
        raise ConfigError(f"--grad={args.grad!r}: expected a comma-separated subset of {', '.join(GRADS)}")
    try:
        hidden = [int(w) for w in args.hidden.split(",")]
    except ValueError:
        raise ConfigError(f"--hidden={args.hidden!r}: expected comma-separated integers such as 512,256") from None
    cases = [
        {"features": f, "labels": c, "head": h, "grad": g, "hidden": hidden, "batch": args.batch, "nnz": args.nnz}
        for c in _label_counts(args.labels) for h in args.head.split(",") for f in _label_counts(args.features)
        for g in grads
    ]
    rows = run(cases, args.world, args.steps, args.warmup, progress=row_printer(format_table))
    return print_rows(rows, format_table, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
