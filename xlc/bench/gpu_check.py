"""One prepared GPU check: xlc's heads and the fused linear-cross-entropy peers at 10^6-10^7 labels, one report.

    bash launch/gpu_check.sh [--cpu]        # = python -m xlc.bench.gpu_check --out $OUT/gpu_check.md [--cpu]

On one GPU, bf16, B=1024, d=768 (`--cpu`: float32, B=8, d=16, 1,000 and 3,000 labels, two repeats, the
same code path and report), in one process:
1. the bf16 matmul rate, timing a large `torch.matmul`; a head's bound is 6 B d C flops at that rate (the
   forward logits, dL/dx and dL/dW of a full linear classifier);
2. per head of `HEAD_SPECS` and label count (`xlc.bench.heads.bench_one`, parameters in bf16, features
   that need a gradient): train-step time, top-5 time, peak memory above the weights and its part that is
   not the gradients (the transient), and bound / step time;
3. `chunked_softmax` without bias beside `cut_cross_entropy.linear_cross_entropy` (filter_eps "high",
   its default, and None, exact) and Liger's `LigerFusedLinearCrossEntropyLoss`, on the same weight,
   features and targets, their losses checked against xlc's; a missing package is reported, not fatal;
4. the targets of the heads issue, each marked met or missed;
5. `xlc train <config> --local` under DeepSpeed ZeRO 0/1/2/3 on a synthetic 10^6-label set, if this
   checkout's `xlc train` has `--local` and deepspeed imports; otherwise the reason it was skipped.
Time budgets keep the whole check under 8 minutes on an H100/H200: a measurement that would start after
its section's budget is reported as skipped, and slow steps are repeated fewer times.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from xlc.bench.heads import _median_ms, bench_one, build_on, default_memory_cap, grad_nbytes, time_step
from xlc.bench.sharded import parse_spec
from xlc.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
HEAD_SPECS = (
    "chunked_softmax", "sharded_softmax", "bce", "mhp:num_heads=2", "mhp:num_heads=3", "mhc:multi_label=false", "mhs",
)
LOSS_RTOL = 1e-3  # peers' loss vs xlc's, relative; bf16 inputs, fp32 accumulation on both sides
K = 5
GIB = 2**30


@dataclass(frozen=True)
class Plan:
    """Sizes and time budgets of one mode."""

    device: str
    dtype: torch.dtype
    batch: int
    dim: int
    labels: tuple[int, ...]
    target_labels: int  # the label count the targets are stated at
    repeats: int
    matmul_n: int  # n of the n x n x n matmul that sets the rate
    measure_budget_s: float  # a step or top-k is repeated fewer times once its calls took this long
    heads_until_s: float  # no head or peer measurement starts after this many seconds
    total_s: float  # the ZeRO runs must end by then
    zero_labels: int
    zero_samples: int
    zero_hidden: int
    zero_batch: int
    zero_steps: int
    zero_timeout_s: float  # per ZeRO stage


# GPU: the bound at 3x10^6 labels is 18 ms at ~790 TFLOP/s (bf16 dense, H100/H200). Liger chunks the batch
# so that a chunk's logits stay within B x d elements: at these label counts one row per chunk, 1,024
# passes over the weight per step (estimated from its source: seconds per step at 10^7 labels), hence a
# per-measurement budget. The 16384^3 matmul takes ~11 ms, long enough to time with a sync per call.
# ZeRO: 300 steps of 256 rows need 76,800 training rows (80% of 96,000 samples).
PLANS = {
    "gpu": Plan(
        device="cuda", dtype=torch.bfloat16, batch=1024, dim=768, labels=(10**6, 3 * 10**6, 10**7),
        target_labels=3 * 10**6, repeats=5, matmul_n=16384, measure_budget_s=3.0, heads_until_s=240.0,
        total_s=450.0, zero_labels=10**6, zero_samples=96_000, zero_hidden=256, zero_batch=256, zero_steps=300,
        zero_timeout_s=90.0,
    ),
    "cpu": Plan(
        device="cpu", dtype=torch.float32, batch=8, dim=16, labels=(1000, 3000), target_labels=3000, repeats=2,
        matmul_n=256, measure_budget_s=1.0, heads_until_s=30.0, total_s=60.0, zero_labels=1000, zero_samples=2_000,
        zero_hidden=16, zero_batch=32, zero_steps=20, zero_timeout_s=60.0,
    ),
}


def matmul_tflops(plan: Plan, device: torch.device) -> float:
    """Rate of an n x n @ n x n matmul in the plan's dtype: 2 n^3 flops over the median time."""
    a, b = (torch.randn(plan.matmul_n, plan.matmul_n, device=device).to(plan.dtype) for _ in range(2))
    a @ b  # warm-up: cuBLAS picks its kernel
    ms = _median_ms(lambda: a @ b, device, max(plan.repeats, 10))
    return 2 * plan.matmul_n**3 / (ms * 1e-3) / 1e12


def bound_ms(plan: Plan, num_labels: int, tflops: float) -> float:
    return 6 * plan.batch * plan.dim * num_labels / (tflops * 1e12) * 1e3


def bench_heads(plan: Plan, device: torch.device, deadline: float) -> list[dict]:
    cap, rows = default_memory_cap(device), []
    for c in plan.labels:
        for spec in HEAD_SPECS:
            name, options = parse_spec(spec)
            if time.monotonic() > deadline:
                rows.append({"head": spec, "labels": c, "skipped": "time budget spent"})
                continue
            try:
                row = bench_one(name, c, plan.batch, plan.dim, device, plan.dtype, plan.repeats, K, options, cap,
                                param_dtype=plan.dtype, features_grad=True, budget_s=plan.measure_budget_s)
            except Exception as e:  # one head failing on this device must not cost the rest of the report
                row = {"labels": c, "skipped": _failed(e)}
            rows.append(row | {"head": spec})
            print(f"head {spec} at {c:,} labels: {_brief(rows[-1])}", file=sys.stderr, flush=True)
    return rows


def _failed(e: Exception) -> str:
    first = (str(e).splitlines() or [""])[0][:160].replace("|", "/")
    return f"failed: {type(e).__name__}: {first}"


def _brief(row: dict) -> str:
    return f"skipped: {row['skipped']}" if row.get("skipped") else f"step {row['step_ms']:.2f} ms"


INT32_ELEMENTS = 2**31  # cut_cross_entropy 25.1.1 indexes the weight with int32: C d >= 2^31 reads out of bounds


def peer_limit(method: str, num_labels: int, dim: int) -> str | None:
    """Why `method` is not run at this size (one out-of-bounds read poisons the CUDA context for the rest)."""
    if method.startswith("cce") and num_labels * dim >= INT32_ELEMENTS:
        return (f"C d = {num_labels * dim:,} >= 2^31: cut_cross_entropy 25.1.1 indexes the weight with int32 "
                "(an illegal memory access at 3,000,000 x 768 on an H200, 2026-11-28)")
    return None


def peer_losses() -> dict[str, object]:
    """Method name -> loss(weight [C, d], x [B, d], y [B]), or the reason it cannot run here."""
    peers: dict[str, object] = {}
    try:
        from cut_cross_entropy import linear_cross_entropy
    except Exception as e:  # ImportError, or a Triton that cannot load
        peers["cce filter_eps='high'"] = peers["cce filter_eps=None"] = f"cut_cross_entropy not importable ({e})"
    else:
        peers["cce filter_eps='high'"] = lambda w, x, y: linear_cross_entropy(x, w, y)
        peers["cce filter_eps=None"] = lambda w, x, y: linear_cross_entropy(x, w, y, filter_eps=None)
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except Exception as e:
        peers["liger fused linear CE"] = f"liger_kernel not importable ({e})"
    else:
        liger = LigerFusedLinearCrossEntropyLoss(reduction="mean")
        peers["liger fused linear CE"] = lambda w, x, y: liger(w, x, y)  # the weight comes first
    return peers


def bench_peers(plan: Plan, device: torch.device, deadline: float) -> list[dict]:
    """Per label count: xlc's chunked softmax (no bias) and each peer on one weight, x and y."""
    peers, rows = peer_losses(), []
    for c in plan.labels:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        torch.manual_seed(0)
        try:
            head = build_on("chunked_softmax", c, plan.dim, {"bias": False}, device, plan.dtype)
        except Exception as e:  # out of memory at the largest label count, say
            rows += [{"method": m, "labels": c, "skipped": _failed(e)} for m in ["xlc chunked_softmax", *peers]]
            continue
        w = head.weight  # [C, d]
        x = torch.randn(plan.batch, plan.dim, device=device).to(plan.dtype).requires_grad_()  # [B, d]
        y = torch.randint(c, (plan.batch,), device=device)  # [B]
        methods = {"xlc chunked_softmax": lambda w, x, y: head.loss(x, y)} | peers
        xlc_loss = None
        for method, loss_fn in methods.items():
            row = {"method": method, "labels": c}
            reason = loss_fn if isinstance(loss_fn, str) else peer_limit(method, c, plan.dim)
            if reason:
                rows.append(row | {"skipped": reason})
                continue
            if time.monotonic() > deadline:
                rows.append(row | {"skipped": "time budget spent"})
                continue
            last = []

            def step(loss_fn=loss_fn, last=last):
                last[:] = [loss_fn(w, x, y)]
                last[0].backward()

            def clear():
                w.grad = x.grad = None

            try:
                step_ms, peak = time_step(step, clear, device, plan.repeats, plan.measure_budget_s)
            except Exception as e:  # a peer's kernel that does not run on this device or dtype
                clear()
                rows.append(row | {"skipped": _failed(e)})
                continue
            loss = float(last[0].detach().float())
            xlc_loss = loss if method == "xlc chunked_softmax" else xlc_loss
            rel = None if xlc_loss is None else abs(loss - xlc_loss) / abs(xlc_loss)
            rows.append(row | {"step_ms": step_ms, "peak_mem_bytes": peak, "grad_bytes": grad_nbytes([w, x]),
                               "loss": loss, "rel_diff": rel, "skipped": None})
            clear()
            print(f"peer {method} at {c:,} labels: {_brief(rows[-1])}", file=sys.stderr, flush=True)
        del head, w, x, methods
    return rows


def _ds_config(plan: Plan, stage: int, work: Path) -> Path:
    """The shipped bf16 ZeRO-`stage` JSON on a GPU; on the CPU the fp32 one with its stage set."""
    if plan.device == "cuda":
        return REPO / "cluster_configs" / "deepspeed" / f"zero{stage}_bf16.json"
    cfg = json.loads((REPO / "cluster_configs" / "deepspeed" / "cpu_fp32.json").read_text())
    cfg["zero_optimization"]["stage"] = stage
    path = work / f"zero{stage}.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = os.environ | {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb", "RAY_USAGE_STATS_ENABLED": "0",
                        "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else e.stderr or ""
        return subprocess.CompletedProcess(cmd, 124, out, err + f"\ntimed out after {timeout:.0f} s")


def _tail_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _tail(text: str) -> str:
    return _tail_line(text).replace("|", "/")[:200]


def zero_skip_reason() -> str | None:
    """Why the ZeRO runs cannot happen in this checkout and environment, or None."""
    help_text = _run([sys.executable, "-m", "xlc.cli", "train", "--help"], 120).stdout
    if "--local" not in help_text:
        return "`xlc train --local` does not exist in this checkout (`python -m xlc.cli train --help` has no --local)"
    probe = _run([sys.executable, "-c", "import deepspeed"], 300)
    if probe.returncode:
        return f"deepspeed does not import ({_tail(probe.stderr)})"
    return None


def run_zero(plan: Plan, stages: list[int], work: Path, deadline: float) -> list[dict]:
    """`xlc train <config> --local --json` per ZeRO stage on a synthetic `plan.zero_labels`-label set."""
    data = work / "data"
    build = _run([sys.executable, "-m", "data_tools.cli", "build", "synthetic", str(data), "--labels",
                  str(plan.zero_labels), "--samples", str(plan.zero_samples)], max(deadline - time.monotonic(), 1))
    if build.returncode:
        return [{"stage": s, "rc": build.returncode, "wall_s": None, "result": f"dataset build failed: {_tail(build.stderr)}"} for s in stages]
    rows = []
    for i, stage in enumerate(stages):
        left = deadline - time.monotonic()
        if left < 10:
            rows.append({"stage": stage, "rc": None, "wall_s": None, "result": "skipped: time budget spent"})
            continue
        config = {
            "name": f"gpu-check-zero{stage}", "data": str(data),
            "backbone": {"name": "mlp", "hidden": [plan.zero_hidden]}, "head": {"name": "chunked_softmax"},
            "train": {"epochs": 1, "batch_size": plan.zero_batch, "max_steps": plan.zero_steps, "log_every_steps": 50},
            "workers": 1, "use_gpu": plan.device == "cuda", "deepspeed": str(_ds_config(plan, stage, work)),
            "eval": {"max_rows": 1000},
            "tracking": {"uri": f"sqlite:///{work}/mlflow.db", "experiment": "gpu-check"},
            "storage": {"path": str(work / "checkpoints")},
        }
        path = work / f"zero{stage}.yaml"
        path.write_text(json.dumps(config))  # JSON is YAML
        start = time.monotonic()
        timeout = min(plan.zero_timeout_s, left / (len(stages) - i))
        done = _run([sys.executable, "-m", "xlc.cli", "train", str(path), "--local", "--json"], timeout)
        row = {"stage": stage, "rc": done.returncode, "wall_s": time.monotonic() - start,
               "result": _tail(done.stderr) or _tail(done.stdout)}
        if done.returncode == 0:
            metrics = json.loads(_tail_line(done.stdout))["metrics"]
            row["result"] = (f"{metrics['samples_per_second']:,.0f} samples/s, peak {_gib(metrics['peak_memory_bytes'])} GiB, "
                             f"P@1 {100 * metrics['p@1']:.2f}")
        rows.append(row)
        print(f"ZeRO {stage}: rc {done.returncode}", file=sys.stderr, flush=True)
    return rows


def _gib(n) -> str:
    return "n/a" if n is None else f"{n / GIB:.3f}"


def _find(rows: list[dict], key: str, value: str, labels: int) -> dict | None:
    return next((r for r in rows if r[key] == value and r["labels"] == labels and not r.get("skipped")), None)


def targets(plan: Plan, heads: list[dict], peers: list[dict], tflops: float) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) per target of the heads issue (stated for an H100 in bf16).

    "Extra memory" is read as the transient (peak above the weights, less the gradients): at 3x10^6
    labels and d=768 the bf16 weight gradient alone is 4.3 GiB, so the whole peak could never be 2 GiB."""
    c, out = plan.target_labels, []
    cs, bound = _find(heads, "head", "chunked_softmax", c), bound_ms(plan, c, tflops)
    transient = None if cs is None or cs["peak_mem_bytes"] is None else cs["peak_mem_bytes"] - cs["grad_bytes"]
    out.append(_target(f"chunked softmax step at {c:,} labels <= 27 ms",
                       cs and (f"{cs['step_ms']:.2f} ms", cs["step_ms"] <= 27)))
    out.append(_target(f"chunked softmax step at {c:,} labels <= 1.5x the matmul bound ({1.5 * bound:.2f} ms)",
                       cs and (f"{cs['step_ms'] / bound:.2f}x", cs["step_ms"] <= 1.5 * bound)))
    out.append(_target(f"chunked softmax extra memory at {c:,} labels <= 2 GiB (transient)",
                       transient is not None and (f"{_gib(transient)} GiB", transient <= 2 * GIB)))
    ours = _find(peers, "method", "xlc chunked_softmax", c)
    for method in dict.fromkeys(r["method"] for r in peers if r["method"] != "xlc chunked_softmax"):
        theirs = _find(peers, "method", method, c)
        measured = None
        if ours and theirs and ours["peak_mem_bytes"] is not None and theirs["peak_mem_bytes"] is not None:
            measured = (f"{ours['step_ms']:.2f} vs {theirs['step_ms']:.2f} ms, "
                        f"{_gib(ours['peak_mem_bytes'])} vs {_gib(theirs['peak_mem_bytes'])} GiB",
                        ours["step_ms"] < theirs["step_ms"] and ours["peak_mem_bytes"] <= theirs["peak_mem_bytes"])
        out.append(_target(f"chunked softmax at {c:,} labels faster than {method} at equal or lower memory", measured))
    mhp = [r for r in heads if r["head"].startswith("mhp") and not r.get("skipped")]
    complete = len(mhp) == 2 * len(plan.labels)  # 2 and 3 heads at every label count
    for field, what in (("step_ms", "step"), ("topk_ms", "top-5")):
        worst = max((r[field] for r in mhp), default=0.0)
        out.append(_target(f"MHP (2 and 3 heads) {what} <= 1 ms at every label count",
                           complete and (f"max {worst:.3f} ms", worst <= 1.0)))
    return out


def _target(target: str, measured: tuple[str, bool] | None) -> tuple[str, str, str]:
    """A targets-table row; `measured` is (what was measured, whether the target is met), falsy if it was not."""
    if not measured:
        return target, "not measured", "not measured"
    return target, measured[0], "met" if measured[1] else "**missed**"


def report(plan: Plan, mode: str, env: dict, tflops: float, heads: list[dict], peers: list[dict], zero: list[dict] | str) -> str:
    lines = [
        "# xlc GPU check", "",
        f"- date: {env['date']}", f"- device: {env['device']}", f"- torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}",
        f"- mode: {mode}; {str(plan.dtype).removeprefix('torch.')}, B={plan.batch}, d={plan.dim}, repeats {plan.repeats} (median), top-{K}",
        f"- matmul rate: {tflops:.3g} TFLOP/s ({plan.matmul_n}^3 {str(plan.dtype).removeprefix('torch.')} `torch.matmul`); "
        f"bound of a head = 6 B d C flops at that rate",
    ]
    if mode == "cpu":
        lines.append("- CPU mode: tiny sizes that exercise the code path; the verdicts below are not the GPU targets' verdicts")
    lines += ["", "## Targets (heads issue, stated for one H100 in bf16)", "", "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {v} |" for t, m, v in targets(plan, heads, peers, tflops)]
    lines += [
        "", "## Heads", "",
        "Parameters in the run's dtype; features need a gradient. Peak = `max_memory_allocated` (CPU: peak RSS) above "
        "the weights and inputs over the timed steps; transient = peak minus the gradients the step leaves. "
        "Bound / step: the fraction of the full-classifier matmul bound reached (mhp, mhc and mhs score fewer "
        "than C labels in training, so theirs can exceed 1).", "",
        "| head | labels | params | train step (ms) | top-5 (ms) | peak (GiB) | gradients (GiB) | transient (GiB) | bound (ms) | bound / step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in heads:
        b = bound_ms(plan, r["labels"], tflops)
        if r.get("skipped"):
            lines.append(f"| {r['head']} | {r['labels']:,} | | | | | | | {b:.2f} | skipped: {r['skipped']} |")
            continue
        transient = None if r["peak_mem_bytes"] is None else r["peak_mem_bytes"] - r["grad_bytes"]
        lines.append(f"| {r['head']} | {r['labels']:,} | {r['params']:,} | {r['step_ms']:.2f} | {r['topk_ms']:.2f} | "
                     f"{_gib(r['peak_mem_bytes'])} | {_gib(r['grad_bytes'])} | {_gib(transient)} | {b:.2f} | {b / r['step_ms']:.2f} |")
    lines += [
        "", "## Fused linear cross-entropy peers", "",
        f"One weight `[C, d]`, features and targets per label count; xlc's `chunked_softmax` with `bias=false`. "
        f"Loss check: relative difference to xlc's loss <= {LOSS_RTOL:g}.", "",
        "| method | labels | train step (ms) | peak (GiB) | loss | rel. diff | loss check | bound / step |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in peers:
        if r.get("skipped"):
            lines.append(f"| {r['method']} | {r['labels']:,} | | | | | skipped: {r['skipped']} | |")
            continue
        rel = "n/a" if r["rel_diff"] is None else f"{r['rel_diff']:.2e}"
        check = "n/a" if r["rel_diff"] is None else "ok" if r["rel_diff"] <= LOSS_RTOL else "**differs**"
        lines.append(f"| {r['method']} | {r['labels']:,} | {r['step_ms']:.2f} | {_gib(r['peak_mem_bytes'])} | {r['loss']:.5f} | "
                     f"{rel} | {check} | {bound_ms(plan, r['labels'], tflops) / r['step_ms']:.2f} |")
    lines += ["", "## Worker loop under --local with DeepSpeed ZeRO 0/1/2/3", ""]
    if isinstance(zero, str):
        lines.append(f"skipped: {zero}")
    else:
        lines += [f"`xlc train <config> --local --json`, synthetic {plan.zero_labels:,} labels, `mlp` {plan.zero_hidden}-d, "
                  f"`chunked_softmax`, batch {plan.zero_batch}, max {plan.zero_steps} steps.", "",
                  "| ZeRO stage | exit status | wall (s) | result (the JSON's samples/s, peak memory, P@1; else the last line) |", "|---:|---:|---:|---|"]
        for z in zero:
            wall = "" if z["wall_s"] is None else f"{z['wall_s']:.1f}"
            lines.append(f"| {z['stage']} | {z['rc']} | {wall} | {z['result']} |")
    return "\n".join(lines) + "\n"


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "device": name,
            "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda or "none"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xlc.bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="tiny CPU float32 mode (CI, no GPU)")
    parser.add_argument("--out", default="gpu_check.md", help="report path (default: ./gpu_check.md)")
    parser.add_argument("--zero-stages", default="0,1,2,3", help="ZeRO stages to run under --local ('' for none)")
    parser.add_argument("--sections", default="heads,peers,zero",
                        help="which of heads, peers and zero to run (default: all three), comma-separated")
    args = parser.parse_args(argv)
    started = time.monotonic()
    mode = "cpu" if args.cpu else "gpu"
    plan = PLANS[mode]
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("gpu check: no CUDA device is visible; pass --cpu for the tiny CPU mode")
    device = torch.device(plan.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny matmuls: more threads only contend on a shared machine
    out, env = Path(args.out), environment(device)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(heads: list[dict], peers: list[dict], zero: list[dict] | str) -> None:
        """The report so far: rewritten after each section, so a check stopped at its time limit keeps it."""
        partial = out.with_name(f".{out.name}.partial")
        partial.write_text(report(plan, mode, env, tflops, heads, peers, zero))
        partial.replace(out)

    tflops = matmul_tflops(plan, device)
    print(f"matmul: {tflops:.3g} TFLOP/s", file=sys.stderr, flush=True)
    sections = set(args.sections.split(","))
    heads = bench_heads(plan, device, started + plan.heads_until_s) if "heads" in sections else []
    write(heads, [], "not run yet")
    peers: list[dict] = []
    if "peers" in sections:
        try:
            peers = bench_peers(plan, device, started + plan.heads_until_s)
        except Exception as e:  # a CUDA error poisons this process's context; the ZeRO runs are subprocesses
            peers = [{"method": "peers section", "labels": 0, "skipped": _failed(e)}]
    write(heads, peers, "not run yet")
    stages = [int(s) for s in args.zero_stages.split(",") if s] if "zero" in sections else []
    zero: list[dict] | str = "no stages asked for" if not stages else zero_skip_reason() or []
    if not isinstance(zero, str):
        work = Path(tempfile.mkdtemp(prefix="xlc-gpu-check-"))
        try:
            zero = run_zero(plan, stages, work, started + plan.total_s)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    write(heads, peers, zero)
    print(f"report: {out} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
