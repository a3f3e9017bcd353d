"""The driver: open (or reopen) the MLflow run, hand the dataset to the workers (with `train.data_order:
stream`, as a Ray Data stream), fit a Ray TorchTrainer.

Running the same run name again resumes: MLflow reuses the run, and Ray Train restores the latest
checkpoint under `storage_path/name` (Train V2 restores a run directory that already exists).
"""

from __future__ import annotations

import os
from pathlib import Path

import ray
import ray.train
from ray.train import CheckpointConfig, DataConfig, FailureConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from xlc import tracking
from xlc.config import RunConfig
from xlc.errors import XlcError
from xlc.report import log_run_report
from xlc.train import stream
from xlc.train.driver import fit_inputs, prepare, reported, storage_path
from xlc.train.ray_runtime import train_loop_per_worker


def ensure_ray(num_workers: int) -> None:
    """Start a local Ray when none is running; on a cluster (`ray job submit`) connect to it."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Starting workers that import torch + DeepSpeed can pass Ray Train's 60 s default on a loaded
    # 2-core machine; the driver propagates this to the controller and workers.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return
    # Logical CPUs: one per worker plus two for Ray Data's read tasks, so streaming never starves
    # behind the training workers on a 2-core machine (the workers mostly wait on each other anyway).
    ray.init(
        num_cpus=num_workers + 2,
        include_dashboard=True,  # Ray Train's state API (worker-group cleanup) runs through the dashboard
        dashboard_host="127.0.0.1",
        log_to_driver=True,
        runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}},
    )


def train(cfg: RunConfig) -> dict:
    """Run (or resume) `cfg` and return {"run_id", "metrics"} with the final evaluation."""
    cfg, meta = prepare(cfg)  # fail fast, before Ray or MLflow start, on a bad dataset or option value
    uri, run_id, resumed = tracking.open_training_run(cfg, meta, cfg.workers)

    ensure_ray(cfg.workers)
    # data_order stream: Ray Data reads and splits the train split; exact: each worker reads its own share
    datasets = {"train": stream.read_train(cfg.data, cfg.backbone.name)} if cfg.train.data_order == "stream" else {}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "run_id": run_id, "tracking_uri": uri,
                           "head_inputs": fit_inputs(cfg)},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=list(datasets)),
        run_config=ray.train.RunConfig(
            name=cfg.name,
            storage_path=storage_path(cfg),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.storage.keep),
            failure_config=FailureConfig(max_failures=cfg.storage.max_failures),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as e:
        tracking.end_run(uri, run_id, failed=True)
        cause = e.__cause__ or e
        if isinstance(cause, XlcError):
            raise cause from None
        raise
    checkpoint = result.checkpoint.path if result.checkpoint is not None else None
    log_run_report(uri, run_id, cfg.data, checkpoint if checkpoint and Path(checkpoint).is_dir() else None)
    tracking.end_run(uri, run_id)
    return {"run_id": run_id, "resumed": resumed, "metrics": reported(result.metrics or {})}
