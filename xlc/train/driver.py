"""What a launcher does around the worker loop, for the Ray trainer and `--local` alike; no Ray, no MLflow.

Before any worker starts: absolute paths, the dataset and model checked (bad values exit 2 before Ray,
MLflow or DeepSpeed start), a fitted head's inputs computed once. After: the metrics a run reports.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from xlc import data as xdata
from xlc.backbones import backbone_input
from xlc.config import RUNS_DIR, RunConfig
from xlc.data.schema import FEAT_IDX, FEAT_VAL, LABELS, TEXT, DatasetMeta
from xlc.heads import fit_head_inputs, needs_training_split
from xlc.train.model import check_model

REPORTED = ("p@", "ndcg@", "psp@", "acc", "recall@", "train_seconds", "samples_per_second", "peak_memory_bytes",
            "head_parameters")


def prepare(cfg: RunConfig) -> tuple[RunConfig, DatasetMeta]:
    """`cfg` with absolute paths (Ray workers run in per-run directories), and its checked dataset meta."""
    cfg = dataclasses.replace(
        cfg, data=str(Path(cfg.data).resolve()), deepspeed=cfg.deepspeed and str(Path(cfg.deepspeed).resolve())
    )
    meta = xdata.read_meta(cfg.data)
    xdata.check_files(cfg.data)
    check_model(cfg, meta)
    return cfg, meta


def storage_path(cfg: RunConfig) -> str:
    """Where the run's checkpoints live: `storage.path`, or ./xlc-runs/checkpoints."""
    return cfg.storage.path or str((RUNS_DIR / "checkpoints").resolve())


def fit_inputs(cfg: RunConfig) -> dict:
    """A fitted head's constructor inputs from the training split ({} for every other head, without FAISS)."""
    if not needs_training_split(cfg.head.name):
        return {}
    from xlc.baselines.label_space import training_split  # FAISS: only for the heads that need it

    return fit_head_inputs(cfg.head.name, training_split(cfg.data, cfg.train.seed), cfg.head.options)


def train_columns(backbone: str) -> list[str]:
    """The train-split columns a backbone reads: labels and sparse features, or labels and text."""
    return [LABELS, FEAT_IDX, FEAT_VAL] if backbone_input(backbone) == "sparse" else [LABELS, TEXT]


def reported(metrics: dict) -> dict:
    """The final metrics a run prints and returns (design.md §3)."""
    return {k: v for k, v in metrics.items() if k.startswith(REPORTED)}
