"""Typed run config: YAML + dotted `key=value` overrides -> `RunConfig`, every error reported at once.

Each section is a dataclass whose fields carry a docstring-like comment; unknown keys, wrong types and
impossible values raise one `ConfigError` whose lines each name the dotted key, the value and what is
allowed. Components receive flat arguments, never this object.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xlc.errors import ConfigError

RUNS_DIR = Path("xlc-runs")  # the local MLflow store and the default checkpoint storage
DATA_ORDERS = ("exact", "stream")  # train.data_order
BEST_ORDERS = ("max", "min")  # storage.keep_best_order


@dataclass
class BackboneConfig:
    name: str = "mlp"  # one of xlc.backbones.BACKBONES
    hidden: list[int] = field(default_factory=lambda: [1024])  # hidden widths; the last is the feature dim
    dropout: float = 0.2  # dropout on the features
    options: dict[str, Any] = field(default_factory=dict)  # backbone-specific extras (e.g. text max_len)


@dataclass
class HeadConfig:
    """`name` plus any options of that head's constructor (checked against its signature). `auto` (the
    default) picks the head from the dataset when the run starts (`xlc.train.driver.default_head`)."""

    name: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    epochs: int = 5  # passes over the training split
    batch_size: int = 256  # per-worker micro-batch; global batch = workers x batch_size
    lr: float = 1e-3  # AdamW learning rate of the backbone
    head_lr: float | None = None  # AdamW learning rate of the head (None: lr)
    weight_decay: float = 0.0
    seed: int = 0
    log_every_steps: int = 20  # loss logged to MLflow every N steps
    checkpoint_every_steps: int = 0  # extra checkpoints every N steps (0: only at epoch ends)
    max_steps: int | None = None  # stop after this many micro-batches (None: all epochs)
    # lr schedule of every optimiser (xlc/train/schedule.py): `warmup_steps` optimiser steps of linear warmup,
    # then constant, linear or cosine decay to 0 at the run's last optimiser step
    schedule: str = "constant"
    warmup_steps: int = 0
    clip_grad_norm: float | None = 1.0  # max gradient norm (engine and a sharded head, each its own); None: off
    # "exact": each rank reads its share of the epoch, in an order set by (seed, epoch), straight from Parquet,
    # so a resumed run (mid-epoch included) trains on exactly the rows it would have; "stream": Ray Data's
    # streaming split (reading and decoding in Ray tasks, on any node), whose order varies run to run
    data_order: str = "exact"


@dataclass
class EvalConfig:
    k: list[int] = field(default_factory=lambda: [1, 3, 5])  # P@k / nDCG@k / PSP@k cut-offs
    psp_a: float = 0.55  # propensity A (Jain et al. 2016)
    psp_b: float = 1.5  # propensity B
    collapse: bool = False  # log neural-collapse metrics (NC1-NC4) on train features at each eval
    max_rows: int | None = None  # evaluate on at most this many test rows (None: all)
    # Time to accuracy: every N optimiser steps (0: never) also score the first `probe_rows` test rows and
    # log probe/p@1 with the training seconds and samples seen so far (evaluation time is not counted).
    every_steps: int = 0
    probe_rows: int = 2000


@dataclass
class TrackingConfig:
    uri: str | None = None  # MLflow tracking URI; None: sqlite store under ./xlc-runs/
    experiment: str = "xlc"
    parent: str | None = None  # MLflow parent run id (`xlc compare` nests its method runs under its own run)


@dataclass
class StorageConfig:
    # checkpoint storage: a path (shared by every node on a cluster) or a pyarrow.fs URI (s3://bucket/prefix;
    # not with --local); None: ./xlc-runs/checkpoints
    path: str | None = None
    shared: bool = False  # `path` is a filesystem every node mounts there (NFS): allowed on a multi-node cluster
    keep: int = 2  # the newest checkpoints kept per run (the resume points)
    # also keep, as NAME/best_checkpoint_*, the checkpoint with the best value of this evaluation metric (p@k,
    # ndcg@k, psp@k for a k of eval.k, or acc); only checkpoints written with an evaluation compete. None: off
    keep_best: str | None = None
    keep_best_order: str = "max"  # "max": the highest value is the best; "min": the lowest
    max_failures: int = 0  # worker-group restarts Ray attempts from the last checkpoint


@dataclass
class RunConfig:
    name: str  # run name: the MLflow run name and the resume key
    data: str  # dataset directory (design.md §3): a path or a pyarrow.fs URI (s3://bucket/prefix)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    workers: int = 2  # Ray workers, one DeepSpeed rank each
    use_gpu: bool = False  # one GPU per worker
    deepspeed: str | None = None  # path to a DeepSpeed JSON; None: ZeRO-0 fp32 AdamW (CPU/gloo safe)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["head"] = {"name": self.head.name, **self.head.options}
        return out


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, errors: list[str]) -> Any:
    """Check `value` against annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            trial: list[str] = []
            out = _coerce(value, arg, key, trial)
            if not trial:
                return out
        errors.append(f"{key}={_fmt(value)}: expected {_type_name(tp)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{key}={_fmt(value)}: expected {_type_name(tp)}")
            return value
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]", errors) for i, v in enumerate(value)]
    if origin is dict or tp is Any:
        if origin is dict and not isinstance(value, dict):
            errors.append(f"{key}={_fmt(value)}: expected a mapping")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool) or not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        errors.append(f"{key}={_fmt(value)}: expected {_type_name(tp)}")
    return value


def _build(cls: type, raw: Any, prefix: str, errors: list[str]):
    if not isinstance(raw, dict):
        errors.append(f"{prefix or 'config'}={_fmt(raw)}: expected a mapping with keys {', '.join(f.name for f in dataclasses.fields(cls))}")
        return None
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            errors.append(f"{prefix}{key}: unknown key; allowed: {', '.join(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                errors.append(f"{prefix}{f.name}: required key is missing")
            continue
        value, tp = raw[f.name], hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, value, f"{prefix}{f.name}.", errors)
        else:
            kwargs[f.name] = _coerce(value, tp, f"{prefix}{f.name}", errors)
    return cls(**kwargs) if not errors else None


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[leaf] = value


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line on what is wrong (PyYAML's own message spans several lines)."""
    return str(getattr(e, "problem", None) or str(e).splitlines()[0])


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """The parsed YAML file at `path`; a missing, unreadable, binary or invalid one is a `ConfigError` naming it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: {what} file is not text (not UTF-8); expected YAML") from None
    except OSError as e:  # a directory, no permission, ...
        raise ConfigError(f"{path}: cannot read the {what} file ({e.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({_yaml_problem(e)})") from None


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply `a.b=value` overrides (values parsed as YAML scalars/lists) to a raw config mapping."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.epochs=2")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value {text!r} is not valid YAML ({_yaml_problem(e)})") from None
        _set_dotted(raw, key.strip(), value)
    return raw


def _check_values(cfg: RunConfig, errors: list[str]) -> None:
    positive = {
        "workers": cfg.workers,
        "train.epochs": cfg.train.epochs,
        "train.batch_size": cfg.train.batch_size,
        "storage.keep": cfg.storage.keep,
        "train.log_every_steps": cfg.train.log_every_steps,
    }
    for key, value in positive.items():
        if value < 1:
            errors.append(f"{key}={value}: must be >= 1")
    for key, value in {"train.lr": cfg.train.lr, "train.head_lr": cfg.train.head_lr}.items():
        if value is not None and not value > 0:
            errors.append(f"{key}={value}: must be > 0")
    from xlc.train.schedule import SCHEDULES

    if cfg.train.schedule not in SCHEDULES:
        errors.append(f"train.schedule={cfg.train.schedule!r}: expected one of {', '.join(SCHEDULES)}")
    if cfg.train.data_order not in DATA_ORDERS:
        errors.append(f"train.data_order={cfg.train.data_order!r}: expected one of {', '.join(DATA_ORDERS)}")
    if cfg.train.warmup_steps < 0:
        errors.append(f"train.warmup_steps={cfg.train.warmup_steps}: must be >= 0 (0: no warmup)")
    if cfg.train.clip_grad_norm is not None and not cfg.train.clip_grad_norm > 0:
        errors.append(f"train.clip_grad_norm={cfg.train.clip_grad_norm}: must be > 0, or null for no clipping")
    if cfg.train.max_steps is not None and cfg.train.max_steps < 1:
        errors.append(f"train.max_steps={cfg.train.max_steps}: must be >= 1, or null for all epochs")
    if not 0 <= cfg.backbone.dropout < 1:
        errors.append(f"backbone.dropout={cfg.backbone.dropout}: must be in [0, 1)")
    if not cfg.eval.k or any(k < 1 for k in cfg.eval.k):
        errors.append(f"eval.k={cfg.eval.k}: must be a non-empty list of integers >= 1")
    if cfg.eval.every_steps < 0 or cfg.eval.probe_rows < 1:
        errors.append(f"eval.every_steps={cfg.eval.every_steps}, eval.probe_rows={cfg.eval.probe_rows}: "
                      "expected every_steps >= 0 (0: no probes) and probe_rows >= 1")
    if cfg.train.checkpoint_every_steps < 0 or cfg.storage.max_failures < -1:
        errors.append("train.checkpoint_every_steps must be >= 0 and storage.max_failures >= -1 (-1: unlimited)")
    _check_keep_best(cfg, errors)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", cfg.name) or ".." in cfg.name:
        errors.append(f"name={cfg.name!r}: use letters, digits, '.', '_' and '-' (it names checkpoint directories)")


def _check_keep_best(cfg: RunConfig, errors: list[str]) -> None:
    from xlc.eval.metrics import metric_names

    if cfg.storage.keep_best_order not in BEST_ORDERS:
        errors.append(f"storage.keep_best_order={cfg.storage.keep_best_order!r}: expected one of "
                      f"{', '.join(BEST_ORDERS)}")
    if cfg.storage.keep_best is None:
        return
    names = metric_names(cfg.eval.k)
    if cfg.storage.keep_best not in names:
        errors.append(f"storage.keep_best={cfg.storage.keep_best!r}: expected a metric the evaluation reports at "
                      f"eval.k={cfg.eval.k}: {', '.join(names)}")
    if "://" in (cfg.storage.path or ""):
        errors.append(f"storage.keep_best={cfg.storage.keep_best!r}: needs storage.path on a filesystem (local or "
                      f"shared), not {cfg.storage.path!r}: xlc keeps the best checkpoint beside the run's checkpoints")


def _check_components(cfg: RunConfig, errors: list[str]) -> None:
    """Names of the backbone and head, and head options against the constructor signature."""
    from xlc.backbones import BACKBONES, backbone_options
    from xlc.heads import HEADS, head_options

    if cfg.backbone.name not in BACKBONES:
        errors.append(f"backbone.name={cfg.backbone.name!r}: expected one of {', '.join(sorted(BACKBONES))}")
    else:
        allowed = backbone_options(cfg.backbone.name)
        for opt in cfg.backbone.options:
            if opt not in allowed:
                errors.append(f"backbone.options.{opt}: not an option of backbone {cfg.backbone.name!r}; "
                              f"valid options: {', '.join(allowed) or '(none)'}")
    if cfg.head.name == "auto":
        if cfg.head.options:
            errors.append(f"head.name=auto (the default) picks the head from the dataset and takes no options; name "
                          f"the head to set {', '.join(sorted(cfg.head.options))}")
        return
    if cfg.head.name not in HEADS:
        errors.append(f"head.name={cfg.head.name!r}: expected auto or one of {', '.join(sorted(HEADS))}")
        return
    allowed = [o for o in head_options(cfg.head.name) if o != "process_group"]
    for opt in cfg.head.options:
        if opt not in allowed:
            errors.append(f"head.{opt}: not an option of head {cfg.head.name!r}; valid options: {', '.join(allowed) or '(none)'}")


def from_dict(raw: dict, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    raw = apply_overrides(dict(raw), overrides)
    head = raw.get("head")
    if isinstance(head, dict):  # the head section is flat in YAML: {name: mhp, num_heads: 2}
        head = dict(head)
        raw["head"] = {"name": head.pop("name", "auto"), "options": head}
    errors: list[str] = []
    cfg = _build(RunConfig, raw, "", errors)
    if cfg is not None:
        _check_values(cfg, errors)
        _check_components(cfg, errors)
    if errors:
        raise ConfigError("\n".join(errors))  # one line per field
    return cfg


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML run config and apply dotted overrides; raise `ConfigError` listing every problem."""
    raw = read_yaml(path, "config")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    return from_dict(raw, overrides)
