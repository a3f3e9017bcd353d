"""Benchmark of every registered head: train-step time, top-k time and peak step memory versus label count.

    python -m xlc.bench.heads --heads softmax,chunked_softmax,bce,rbf --labels 1e4,1e5,1e6 --batch 256 --dim 256

Per head x label count, on random features and single-label targets:
- `step_ms`: median over `repeats` (after one untimed warm-up step) of `loss(x, y).backward()`, gradients cleared to None.
- `topk_ms`: median of `topk(x, k)` under no_grad.
- `peak_mem_bytes`: memory above the weights and inputs at the peak of the steps (logits, temporaries, weight
  gradients). CUDA: `max_memory_allocated` minus `memory_allocated` before the first step. CPU: growth of the
  process's peak RSS (`VmHWM`, reset through `/proc/self/clear_refs` after `malloc_trim`); None where that
  file cannot be written. RSS counts touched pages, so it can differ a little from the allocator's count.
- combos whose weights + gradients (+ B x C logits for heads that materialise them) exceed `memory_cap_bytes`
  are reported as skipped instead of run; so is a combo that runs out of memory anyway.
- `grad_bytes`: the gradients the step leaves (weights, plus the features with `features_grad`); the peak
  includes them, so `peak_mem_bytes - grad_bytes` is the step's transient memory (logit chunks, temporaries).

`param_dtype` casts the head's parameters (built in fp32, on the device) before the steps, as a bf16
training run holds them; by default they stay fp32 and only the features are cast to `dtype`.
`features_grad` makes the features a leaf that needs a gradient, as the output of a backbone does, so the
step also computes dL/dx (the 6 B d C flops of a linear head instead of 4).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import statistics
import sys
import time
from typing import Callable

import torch

from xlc.errors import ConfigError
from xlc.heads import HEADS, build_head

# Heads that hold B x C logits by design; their logits, softmax and gradient (3 x B x C fp32) count in the cap.
MATERIALISES_LOGITS = {"softmax"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, device: torch.device, repeats: int, budget_s: float | None = None) -> float:
    """Median of `repeats` timed calls; with `budget_s`, fewer once the calls so far have taken that long."""
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
        if budget_s is not None and sum(times) >= budget_s * 1e3:
            break
    return statistics.median(times)


class PeakMemory:
    """Peak memory growth over a block: CUDA allocator stats, or the CPU peak RSS (VmHWM) reset per block."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, None

    @staticmethod
    def _status_kib(field: str) -> int:
        with open("/proc/self/status") as f:
            return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back so reuse does not hide growth
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.base = self._status_kib("VmRSS")
        except OSError:
            self.base = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        elif self.base is not None:
            self.peak = (self._status_kib("VmHWM") - self.base) * 1024


def _meta_params(name: str, num_labels: int, dim: int, options: dict) -> int | None:
    """Parameter count of the head, built on the meta device (no memory); None if it cannot be built there."""
    try:
        with torch.device("meta"):
            head = build_head(name, num_labels, dim, **options)
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    return sum(p.numel() for p in head.parameters())


def build_on(name: str, num_labels: int, dim: int, options: dict, device: torch.device, param_dtype=None) -> torch.nn.Module:
    """`build_head` with the parameters drawn on `device` (on a GPU, 10^7 x 768 weights drawn on the CPU and
    copied take minutes), then cast to `param_dtype`. A head that seeds a CPU generator for its initial
    weights (`sharded_softmax`) cannot draw them on a GPU: it is built on the meta device and its
    parameters drawn there from nn.Linear's distribution, U(+-1/sqrt(fan_in)); biases start at 0. One that
    also holds seeded buffers (`etf`'s simplex) is built on the CPU and moved, as before."""
    try:
        with torch.device(device):
            head = build_head(name, num_labels, dim, **options)
    except RuntimeError as e:  # "Expected a 'cuda' device type for generator"
        if device.type == "cpu" or isinstance(e, torch.OutOfMemoryError):
            raise
        with torch.device("meta"):
            head = build_head(name, num_labels, dim, **options)
        if list(head.buffers()):
            head = build_head(name, num_labels, dim, **options).to(device)
        else:
            head = head.to_empty(device=device)
            with torch.no_grad():
                for p in head.parameters():
                    p.uniform_(-p.shape[-1] ** -0.5, p.shape[-1] ** -0.5) if p.dim() > 1 else p.zero_()
    return head if param_dtype is None else head.to(param_dtype)


def time_step(
    step: Callable[[], None], clear: Callable[[], None], device: torch.device, repeats: int, budget_s: float | None = None
) -> tuple[float, int | None]:
    """(median ms of `clear(); step()`, peak memory growth over the timed calls) after an untimed warm-up.

    `clear` sets the gradients `step` leaves to None, so each call allocates them anew and the peak counts
    them. The warm-up keeps one-time allocations (autograd engine, kernel choice, Triton autotuning) out of
    both figures. The last call's gradients are left in place, for the caller to measure."""
    step()
    clear()
    with PeakMemory(device) as mem:
        step_ms = _median_ms(lambda: (clear(), step()), device, repeats, budget_s)
    return step_ms, mem.peak


def grad_nbytes(tensors) -> int:
    """Bytes of the gradients held by `tensors`."""
    return sum(t.grad.numel() * t.grad.element_size() for t in tensors if t.grad is not None)


def default_memory_cap(device: torch.device) -> int:
    if device.type == "cuda":
        return int(0.9 * torch.cuda.get_device_properties(device).total_memory)
    with open("/proc/meminfo") as f:
        available_kib = int(re.search(r"MemAvailable:\s+(\d+)", f.read()).group(1))
    return int(0.8 * available_kib * 1024)


def bench_one(
    name, num_labels, batch, dim, device, dtype, repeats, k, options, cap, *,
    param_dtype=None, features_grad=False, budget_s=None,
) -> dict:
    """One row of `run` (see the module docstring)."""
    row = {"head": name, "labels": num_labels, "batch": batch, "dim": dim, "device": str(device), "dtype": str(dtype).removeprefix("torch.")}
    empty = {"params": None, "step_ms": None, "topk_ms": None, "peak_mem_bytes": None, "grad_bytes": None}
    try:
        params = _meta_params(name, num_labels, dim, options)
    except ConfigError as e:  # options that do not fit this label count (e.g. num_groups > labels): skip the combo
        return row | empty | {"skipped": str(e)}
    # fp32 weights as built + their gradient (fp32) or their cast copy (param_dtype; more than its gradient)
    need = (4 + (4 if param_dtype is None else param_dtype.itemsize)) * (params or 0)
    if name in MATERIALISES_LOGITS:
        need += 3 * 4 * batch * num_labels  # fp32 logits, softmax and dL/dz
    if need > cap:
        skipped = f"would materialise {need / 2**30:.2f} GiB (cap {cap / 2**30:.2f} GiB)"
        return row | empty | {"params": params, "skipped": skipped}
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the previous combo's cached blocks would fragment a 10^7-label weight
    try:
        torch.manual_seed(0)
        head = build_on(name, num_labels, dim, options, device, param_dtype)
        x = torch.randn(batch, dim, device=device).to(dtype).requires_grad_(features_grad)  # [B, d]
        y = torch.randint(num_labels, (batch,), device=device)  # [B]

        def clear():
            head.zero_grad(set_to_none=True)
            x.grad = None

        step_ms, peak = time_step(lambda: head.loss(x, y).backward(), clear, device, repeats, budget_s)
        grad_bytes = grad_nbytes([x, *head.parameters()])
        clear()
        with torch.no_grad():
            head.topk(x, k)
            topk_ms = _median_ms(lambda: head.topk(x, k), device, repeats, budget_s)
    except torch.OutOfMemoryError as e:
        return row | empty | {"params": params, "skipped": f"out of memory ({str(e).splitlines()[0][:120]})"}
    params = sum(p.numel() for p in head.parameters())
    return row | {"params": params, "step_ms": step_ms, "topk_ms": topk_ms, "peak_mem_bytes": peak, "grad_bytes": grad_bytes, "skipped": None}


def run(
    heads: list[str],
    label_counts: list[int],
    batch: int,
    dim: int,
    device: str = "cpu",
    dtype: str = "float32",
    repeats: int = 5,
    k: int = 5,
    options: dict[str, dict] | None = None,
    memory_cap_bytes: int | None = None,
    progress: Callable[[dict], None] | None = None,
) -> list[dict]:
    """One row per head x label count (see the module docstring); `progress(row)` is called as each finishes."""
    unknown = sorted(set(heads) - set(HEADS))
    if unknown:
        raise ConfigError(f"--heads: {', '.join(unknown)} unknown; expected some of {', '.join(sorted(HEADS))}")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device=cuda: no CUDA device is visible; use --device cpu or auto")
    dev = torch.device(device)
    cap = memory_cap_bytes or default_memory_cap(dev)
    options = options or {}
    rows = []
    for c in label_counts:
        for name in heads:
            rows.append(bench_one(name, c, batch, dim, dev, DTYPES[dtype], repeats, k, options.get(name, {}), cap))
            if progress:
                progress(rows[-1])
    return rows


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.1f} MiB"


def format_table(rows: list[dict]) -> str:
    """Markdown table of `run`'s rows."""
    lines = [
        "| head | labels | params | train step (ms) | top-k (ms) | peak step memory |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['head']} | {r['labels']:,} | | | | skipped: {r['skipped']} |")
        else:
            lines.append(
                f"| {r['head']} | {r['labels']:,} | {r['params']:,} | {r['step_ms']:.1f} | {r['topk_ms']:.1f} | {_mib(r['peak_mem_bytes'])} |"
            )
    return "\n".join(lines)


def _label_counts(text: str) -> list[int]:
    try:
        counts = [int(float(part)) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"--labels={text!r}: expected comma-separated counts such as 1e4,1e5,1e6") from None
    if any(c < 2 for c in counts):
        raise ConfigError(f"--labels={text!r}: every label count must be at least 2")
    return counts


def row_printer(table: Callable[[list[dict]], str]) -> Callable[[dict], None]:
    """Progress callback: each finished row as one table line on stderr."""
    return lambda row: print(table([row]).splitlines()[-1], file=sys.stderr, flush=True)


def print_rows(rows: list[dict], table: Callable[[list[dict]], str], as_json: bool) -> int:
    """The markdown table on stdout, then the rows as one JSON line when asked; the exit status."""
    print(table(rows))
    if as_json:
        print(json.dumps(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xlc bench heads", description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", default="softmax,chunked_softmax,bce,rbf", help="comma-separated head names")
    parser.add_argument("--labels", default="1e4,1e5,1e6", help="comma-separated label counts")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--options", default="{}", help='per-head options as JSON, e.g. \'{"rbf": {"gamma": 35}}\'')
    parser.add_argument("--memory-cap-gib", type=float, default=None, help="skip combos needing more (default: 80%% of free RAM / 90%% of GPU)")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON line after the table")
    args = parser.parse_args(argv)
    try:
        options = json.loads(args.options)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--options: not valid JSON ({e})") from None
    rows = run(
        [h for h in args.heads.split(",") if h],
        _label_counts(args.labels),
        args.batch,
        args.dim,
        args.device,
        args.dtype,
        args.repeats,
        args.k,
        options,
        None if args.memory_cap_gib is None else int(args.memory_cap_gib * 2**30),
        progress=row_printer(format_table),
    )
    return print_rows(rows, format_table, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
