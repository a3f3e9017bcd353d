"""What a launcher does around the worker loop, for the Ray trainer and `--local` alike; no Ray, no MLflow.

Before any worker starts: absolute paths, the dataset and model checked (bad values exit 2 before Ray,
MLflow or DeepSpeed start), a fitted head's inputs computed once. During: the epoch order of
`train.data_order: exact`. After: the metrics a run reports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import pyarrow as pa

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


def exact_epoch(cfg: RunConfig, num_train: int, rank: int, world: int, epoch: int, drop_last: bool
                ) -> Iterator[pa.Table]:
    """This rank's batches of one epoch under `data_order: exact`: a function of (seed, epoch, rank, world)
    alone (`xlc.data.iter_tables`: batch i of the epoch's seeded shuffle goes to rank i % world), cut to whole
    rounds so every rank takes as many steps. A run resumed at batch j of an epoch skips the same j batches."""
    batch_size = cfg.train.batch_size
    full, rest = divmod(num_train, batch_size)
    per_rank = (full + (rest > 0 and not drop_last)) // world
    tables = xdata.iter_tables(cfg.data, "train", batch_size, rank=rank, world=world,
                               columns=train_columns(cfg.backbone.name), shuffle_seed=cfg.train.seed + epoch)
    return islice(tables, per_rank)


def reported(metrics: dict) -> dict:
    """The final metrics a run prints and returns (design.md §3)."""
    return {k: v for k, v in metrics.items() if k.startswith(REPORTED)}
