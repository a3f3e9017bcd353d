"""Evaluation outside Ray: rebuild a run's model from its checkpoint in one process and score a dataset.

A label-sharded head is reassembled from all of its saved shards (world size 1 owns every label),
so `xlc eval` works for a run trained on any number of workers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from xlc import config as xconfig
from xlc import data as xdata
from xlc import tracking
from xlc.data.location import open_location
from xlc.errors import ConfigError
from xlc.eval.metrics import inv_propensity
from xlc.heads import ShardedHead
from xlc.train import checkpoint as ckpt
from xlc.train.evaluation import evaluate
from xlc.train.model import build_model


@contextlib.contextmanager
def checkpoint_of(ref: str, uri: str | None) -> Iterator[Path]:
    """A checkpoint directory given directly, or the newest valid checkpoint of an MLflow run id: under the run's
    `storage.path`, where an object store's is downloaded for the duration (`checkpoint.fetch_newest`)."""
    path = Path(ref)
    if path.is_dir():
        found = ckpt.latest_valid(path)
        if found is None:
            raise ConfigError(f"{path}: not a valid checkpoint ({'; '.join(ckpt.verify(path)[:2])})")
        yield found
        return
    client = tracking.client(tracking.resolve_uri(uri))
    try:
        run = client.get_run(ref)
    except Exception:
        raise ConfigError(f"{ref!r}: neither a checkpoint directory nor a run id in {tracking.resolve_uri(uri)}") from None
    storage = run.data.params.get("storage.path") or "None"  # a flattened None param reads "None"
    run_dir = open_location(str(tracking.RUNS_DIR / "checkpoints") if storage == "None" else storage)
    run_dir /= run.info.run_name
    with ckpt.fetch_newest(run_dir) as found:  # DataError when every one is corrupt
        if found is None:
            raise ConfigError(f"run {ref}: no checkpoint under {run_dir}")
        yield found


def load_checkpoint(directory: Path, data_dir: str | None = None):
    """(model, head, cfg, data_dir) rebuilt from a checkpoint (or an exported model) on the CPU, in eval mode."""
    state = ckpt.read_state(directory)
    cfg = xconfig.from_dict(state["config"])
    data_dir = data_dir or cfg.data
    model, head = build_model(cfg, xdata.read_meta(data_dir), ckpt.load_head_inputs(directory))
    model.load_state_dict(ckpt.module_state(directory))
    if isinstance(head, ShardedHead):
        ckpt.load_head_shard(directory, head)
    return model.eval(), head.eval(), cfg, data_dir


def evaluate_checkpoint(directory: Path, data_dir: str | None = None) -> dict[str, float]:
    model, head, cfg, data_dir = load_checkpoint(directory, data_dir)
    meta = xdata.read_meta(data_dir)
    counts = torch.from_numpy(xdata.label_counts(data_dir))
    inv_prop = inv_propensity(counts, meta.num_train, a=cfg.eval.psp_a, b=cfg.eval.psp_b)
    return evaluate(data_dir, meta, model, head, torch.device("cpu"), ks=cfg.eval.k,
                    batch_size=cfg.train.batch_size, inv_prop=inv_prop, max_rows=None, train_counts=counts)


@torch.no_grad()
def embed_split(model, data_dir: str, split: str, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, d] float32, first label [N]) of a split, through the model's backbone in eval mode."""
    feats, labels = [], []
    multi_label = xdata.read_meta(data_dir).multi_label
    for batch in xdata.iter_batches(data_dir, split, batch_size):
        feats.append(model(batch).float().numpy())
        labels.append((batch.targets[:, 0] if multi_label else batch.targets).numpy())
    return np.concatenate(feats), np.concatenate(labels)

