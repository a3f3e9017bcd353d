"""DeepSpeed setup: the default config (ZeRO-0, fp32, CPU/gloo safe), JSON configs, and the head optimiser.

The backbone (and a replicated head) live in the DeepSpeed engine and are averaged data-parallel.
A label-sharded head is kept out of the engine with its own AdamW: its shards differ per rank and
must never enter data-parallel gradient averaging (Partial FC keeps PFC outside DDP for the same reason).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from xlc.errors import ConfigError
from xlc.train import checkpoint as ckpt


def select_accelerator(use_gpu: bool) -> None:
    """Must run before `import deepspeed`: DeepSpeed picks its accelerator at import time."""
    if not use_gpu:
        os.environ["DS_ACCELERATOR"] = "cpu"


def deepspeed_config(path: str | None, *, batch_size: int, lr: float, weight_decay: float,
                     clip_grad_norm: float | None) -> dict:
    """The DeepSpeed JSON at `path` (its "auto" values filled in from the run config), or the default ZeRO-0
    fp32 config. The schedule and clipping belong to the run config (`train.schedule`, `train.clip_grad_norm`),
    so a JSON that sets a `scheduler`, or a `gradient_clipping` other than the run's, is refused; so is
    `checkpoint.load_universal`, which the resume sets itself (`xlc.train.persist`)."""
    clipping = clip_grad_norm or 0.0  # DeepSpeed: 0 = no clipping
    if path is None:
        return {
            "train_micro_batch_size_per_gpu": batch_size,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": clipping,
            "zero_optimization": {"stage": 0},
            "steps_per_print": 10**9,
        }
    try:
        cfg = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"deepspeed={path!r}: file not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"deepspeed={path!r}: invalid JSON at line {e.lineno} ({e.msg})") from None
    if "scheduler" in cfg:
        raise ConfigError(f"deepspeed={path!r}: remove its \"scheduler\"; set train.schedule and train.warmup_steps "
                          "instead (one schedule drives the engine and the optimisers outside it)")
    if (cfg.get("checkpoint") or {}).get("load_universal"):
        raise ConfigError(f"deepspeed={path!r}: remove checkpoint.load_universal; xlc converts a checkpoint to "
                          "DeepSpeed's universal form and loads it so when the worker count changes")
    if cfg.get("gradient_clipping", "auto") not in ("auto", clipping):
        raise ConfigError(f"deepspeed={path!r} sets gradient_clipping={cfg['gradient_clipping']} but "
                          f"train.clip_grad_norm={clip_grad_norm}; set it in one place (\"auto\" in the JSON)")
    cfg["gradient_clipping"] = clipping
    if cfg.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        cfg["train_micro_batch_size_per_gpu"] = batch_size
    if cfg.get("gradient_accumulation_steps", "auto") == "auto":
        cfg["gradient_accumulation_steps"] = 1
    cfg.pop("train_batch_size", None)  # derived by DeepSpeed from micro batch x accumulation x world
    for key, value in (cfg.get("optimizer") or {}).get("params", {}).items():
        if value == "auto":
            cfg["optimizer"]["params"][key] = {"lr": lr, "weight_decay": weight_decay}.get(key, value)
    cfg.setdefault("steps_per_print", 10**9)
    return cfg


def adamw(params, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with the fused kernel: one pass over each tensor instead of a dozen `foreach` passes, which is
    what a 10^6-label classifier's optimiser step costs on a CPU (see docs/benchmarks.md, `xlc bench train`),
    and the fast path on CUDA. The update is AdamW's own; only the kernel differs."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def initialize(model: torch.nn.Module, param_groups: list[dict], ds_config: dict, *, lr: float, weight_decay: float,
               lr_lambda: Callable[[int], float] | None = None):
    """`deepspeed.initialize` with a client AdamW over `param_groups` unless the JSON names an optimizer, and a
    `LambdaLR(lr_lambda)` over whichever optimizer the engine holds (DeepSpeed steps it at each boundary)."""
    import deepspeed

    # The CPU accelerator JIT-compiles a shared-memory all-reduce op that only DeepSpeed's inference
    # path uses; skipping it saves a C++ build per machine and the torch-extensions lock that a worker
    # killed mid-build leaves behind (every later start then waits on it forever).
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    deepspeed.utils.logger.setLevel(logging.WARNING)
    optimizer = None
    if "optimizer" not in ds_config:
        optimizer = adamw(param_groups, lr=lr, weight_decay=weight_decay)
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=param_groups if optimizer is None else None,
        optimizer=optimizer,
        lr_scheduler=None if lr_lambda is None else (lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)),
        config=ds_config,
    )
    return engine


def gather_with_calls(module: torch.nn.Module, used: torch.nn.Module) -> None:
    """ZeRO-3 gathers a module's own parameters around each call of it (forward, and again for its backward);
    this adds those of `used`, a submodule that `module.forward` uses through its methods (a head's `loss`,
    `topk`) instead of calling it, whose parameters would otherwise stay partitioned (empty) there."""
    import deepspeed

    for p in used.parameters():
        deepspeed.zero.register_external_parameter(module, p)


def gathered(module: torch.nn.Module):
    """A context in which `module`'s ZeRO-3 parameters are whole on every rank, to read (no-op at other stages,
    and for parameters outside the engine)."""
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(module.parameters()))


def deepspeed_globals() -> list[type]:
    """The classes DeepSpeed pickles into its checkpoint files beside tensors and plain data: found by saving at
    ZeRO 0, 1 and 2 in fp32 and bf16 (`torch.serialization.get_unsafe_globals_in_checkpoint`: ZeRO 0 none, ZeRO
    1-2 the first three), plus the loss scaler fp16 saves in their place."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address, DynamicLossScaler]


class _WeightsOnlyLoads:
    """A DeepSpeed checkpoint engine that reads every file with `weights_only=True` (DeepSpeed's own passes
    `weights_only=False`, so a doctored file would run code on load); the rest is the wrapped engine's."""

    def __init__(self, inner):
        self._inner = inner
        self._allowed = deepspeed_globals()

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def load(self, path: str, map_location=None):
        return ckpt.load_file(path, map_location=map_location, allowed=self._allowed)


def load_checkpoint(engine, directory: str | Path, tag: str) -> None:
    """`engine.load_checkpoint` (module, optimiser, lr schedule, strict module keys) with every file read by
    `weights_only=True`; a file holding any other pickled object raises `DataError` and runs nothing."""
    original = engine.checkpoint_engine
    engine.checkpoint_engine = _WeightsOnlyLoads(original)
    try:
        engine.load_checkpoint(str(directory), tag=tag, load_module_strict=True)
    finally:
        engine.checkpoint_engine = original


def accumulation_steps(ds_config: dict) -> int:
    """Micro-batches per optimiser step."""
    return int(ds_config["gradient_accumulation_steps"])


def zero_stage(ds_config: dict) -> int:
    return int((ds_config.get("zero_optimization") or {}).get("stage", 0))


def low_precision(ds_config: dict) -> bool:
    """Whether the JSON trains in bf16 or fp16."""
    return any((ds_config.get(key) or {}).get("enabled", False) for key in ("bf16", "fp16"))
