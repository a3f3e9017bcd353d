"""The driver: open (or reopen) the MLflow run, hand the dataset to the workers (with `train.data_order:
stream`, as a Ray Data stream), fit a Ray TorchTrainer.

Running the same run name again resumes: MLflow reuses the run, and every worker resumes from the newest
checkpoint under `storage_path/name` that verifies, whether or not Ray recorded it (a run stopped between
writing a checkpoint and Ray's record of it), on a filesystem or an object store (s3://: listed through
pyarrow.fs, only the chosen checkpoint downloaded). Every checkpoint corrupt stops the run before Ray starts
(on an object store, checkpoints whose files are all there with their sizes but whose checksums all fail stop
it in the workers, also with exit status 2); `restart` starts over.
"""

from __future__ import annotations

import os
import signal
import threading
import warnings

if not os.environ.get("RAY_ADDRESS"):
    # A Ray this process starts is single-node: Ray then takes 127.0.0.1 as the node address, and its GCS,
    # raylet, workers and agents listen there instead of on every interface. Read when `ray` is imported.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # noqa: E402
import ray.train  # noqa: E402
from ray.train import CheckpointConfig, DataConfig, FailureConfig, ScalingConfig  # noqa: E402
from ray.train.torch import TorchConfig, TorchTrainer  # noqa: E402

from xlc import tracking  # noqa: E402
from xlc.config import RunConfig  # noqa: E402
from xlc.data.location import open_location  # noqa: E402
from xlc.errors import XlcError  # noqa: E402
from xlc.report import log_run_report  # noqa: E402
from xlc.train import stream  # noqa: E402
from xlc.train.driver import (check_shared_storage, fit_inputs, prepare, prune_unrecorded, reported,  # noqa: E402
                              restored, resume_point, run_dir, start_over, storage_path)
from xlc.train.ray_runtime import train_loop_per_worker  # noqa: E402

def ensure_ray(num_workers: int) -> None:
    """Start a local Ray when none is running, listening on 127.0.0.1 only; on a cluster (`ray job submit`)
    connect to it. A SIGTERM handler the caller installed (`xlc train`'s) stays in force."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Starting workers that import torch + DeepSpeed can pass Ray Train's 60 s default on a loaded
    # 2-core machine; the driver propagates this to the controller and workers.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    sigterm = signal.getsignal(signal.SIGTERM)
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        # Logical CPUs: one per worker plus two for Ray Data's read tasks, so streaming never starves
        # behind the training workers on a 2-core machine (the workers mostly wait on each other anyway).
        ray.init(
            num_cpus=num_workers + 2,
            include_dashboard=True,  # Ray Train's state API (worker-group cleanup) runs through the dashboard
            dashboard_host="127.0.0.1",
            log_to_driver=True,
            runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}},
        )
    if not os.environ.get("RAY_ADDRESS") and ray.util.get_node_ip_address() != "127.0.0.1":
        warnings.warn("Ray was imported before xlc.train.trainer, so the local Ray listens on every interface, "
                      "not only on 127.0.0.1", stacklevel=2)
    if callable(sigterm) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, sigterm)  # ray.init replaces it with one that exits the process


def cluster_nodes(num_workers: int) -> int:
    """The alive nodes of the Ray cluster the run will use, connecting to it first where RAY_ADDRESS names one
    (`ray job submit` sets it); 1 where xlc is to start a local Ray itself, which is one node, not started yet.
    Nodes an autoscaler adds later are not counted."""
    if not os.environ.get("RAY_ADDRESS") and not ray.is_initialized():
        return 1
    ensure_ray(num_workers)
    return sum(1 for node in ray.nodes() if node["Alive"])


class _Trainer(TorchTrainer):
    def _register_sigint_handler(self, controller) -> None:
        """Keep Python's own SIGINT handling: Ctrl-C raises `KeyboardInterrupt` out of `fit`, so the run ends
        as KILLED with a message (Ray's handler aborts the controller and exits the driver with status 1)."""


def train(cfg: RunConfig, restart: bool = False) -> dict:
    """Run (or resume; `restart`: start over from step 0) `cfg` and return {"run_id", "metrics"} with the final
    evaluation."""
    cfg, meta = prepare(cfg)  # fail fast, before Ray or MLflow start, on a bad dataset or option value
    check_shared_storage(cfg, cluster_nodes(cfg.workers))  # before --restart deletes anything
    run = run_dir(cfg)
    if restart:
        start_over(cfg)
    # every checkpoint corrupt: exit 2 now, not a silent restart from step 0
    resume = None if restart else resume_point(run)
    prune_unrecorded(run, cfg.storage.keep, resume)
    storage = open_location(storage_path(cfg))
    uri, run_id, resumed = tracking.open_training_run(cfg, meta, cfg.workers, fresh=restart)
    with tracking.ending(uri, run_id):  # from here on, an exception or an interrupt ends it FAILED or KILLED
        ensure_ray(cfg.workers)
        # data_order stream: Ray Data reads and splits the train split; exact: each worker reads its own share
        datasets = {"train": stream.read_train(cfg.data, cfg.backbone.name)} if cfg.train.data_order == "stream" else {}
        trainer = _Trainer(
            train_loop_per_worker,
            train_loop_config={"config": cfg.to_dict(), "run_id": run_id, "tracking_uri": uri,
                               "head_inputs": fit_inputs(cfg), "run_dir": run},
            scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu),
            torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
            datasets=datasets,
            dataset_config=DataConfig(datasets_to_split=list(datasets)),
            run_config=ray.train.RunConfig(
                name=cfg.name,
                # a URI's filesystem as opened here, with its query options (endpoint_override=...); Ray then
                # takes the path as one on that filesystem
                storage_path=storage.path,
                storage_filesystem=None if storage.is_local else storage.fs,
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.storage.keep),
                failure_config=FailureConfig(max_failures=cfg.storage.max_failures),
            ),
        )
        try:
            result = trainer.fit()
        except Exception as e:
            # a user error in a worker (Ray Train hands the workers' exceptions over as `worker_failures`; some
            # paths chain it as the cause) ends the command as one line with status 2, as the driver's do
            for cause in (e, e.__cause__, *getattr(e, "worker_failures", {}).values()):
                if isinstance(cause, XlcError):
                    raise cause from None
            raise
        prune_unrecorded(run, cfg.storage.keep)
        with restored(run) as final:  # the model the report exports (downloaded once from an object store)
            log_run_report(uri, run_id, cfg.data, final)
    return {"run_id": run_id, "resumed": resumed, "metrics": reported(result.metrics or {})}
