"""MLflow: the local store, run setup and resume by name, flat params, metrics, artifacts, reading runs back.

With no tracking URI, runs go to a SQLite store `./xlc-runs/mlflow.db` with artifacts under
`./xlc-runs/artifacts`. A run is identified by (experiment, run name): starting a run whose name
already exists reuses that MLflow run, which is how `xlc train` resumes.

Runs carry MLflow's own conventions, so its UI shows them as a training workflow: experiments are tagged
`mlflow.experimentKind=custom_model_development` (MLflow 3 otherwise opens on its GenAI overview), runs
get the standard source tags (`mlflow.source.git.commit`, `mlflow.source.name`, `mlflow.user`), a
one-line description (`mlflow.note.content`), their dataset as an MLflow dataset input, and
`mlflow.parentRunId` when a compare runs them, and MLflow's system metrics (`system/...`: CPU, memory,
disk, network; GPU with `nvidia-ml-py`) sampled while they train or fit.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from xlc.config import RUNS_DIR, RunConfig  # noqa: E402
from xlc.data.location import absolute, open_location  # noqa: E402
from xlc.data.schema import META_FILE  # noqa: E402
MAX_PARAM_LENGTH = 6000


def resolve_uri(uri: str | None) -> str:
    """The tracking URI: `uri` as given, or the absolute SQLite store under ./xlc-runs/."""
    if uri:
        return uri
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(RUNS_DIR / 'mlflow.db').resolve()}"


def _artifact_root(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()
    return None  # a tracking server decides


def client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def experiment_id(uri: str, name: str) -> str:
    """The id of experiment `name`, created (as a model-training experiment) when missing."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        return c.create_experiment(name, artifact_location=_artifact_root(uri), tags=dict([EXPERIMENT_KIND]))
    if EXPERIMENT_KIND[0] not in exp.tags:
        c.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
    return exp.experiment_id


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} -> {'a.b': '1'}: MLflow params are flat strings."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:MAX_PARAM_LENGTH]
    return out


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        ).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def find_run(uri: str, experiment: str, run_name: str):
    """The newest run of `experiment` named `run_name`, or None."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = c.search_runs(
        [exp.experiment_id],
        filter_string=f"attributes.run_name = '{run_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def source_tags() -> dict[str, str]:
    """MLflow's standard source tags for a run started by this process."""
    return {
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": " ".join(["xlc", *sys.argv[1:2]]),
        "mlflow.source.git.commit": git_commit(),
        "mlflow.user": getpass.getuser(),
    }


def start_run(uri: str, experiment: str, run_name: str, params: dict[str, str], tags: dict[str, str], *,
              parent_run_id: str | None = None, description: str | None = None, fresh: bool = False
              ) -> tuple[str, bool]:
    """Create the run named `run_name`, or reopen it (unless `fresh`: a new run of the same name, which later
    resumes then find): returns (run_id, resumed).

    MLflow params are immutable, so a resumed run whose config changed keeps its first values and records
    each change as a tag `changed_on_resume.KEY` = "old -> new" (new keys are logged as params).
    """
    c = client(uri)
    tags = {**source_tags(), **tags}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    if description:
        tags["mlflow.note.content"] = description
    existing = None if fresh else find_run(uri, experiment, run_name)
    if existing is not None:
        run_id, old = existing.info.run_id, existing.data.params
        c.update_run(run_id, status="RUNNING")
        changed = {f"changed_on_resume.{k}": f"{old[k]} -> {v}"[:MAX_PARAM_LENGTH]
                   for k, v in params.items() if k in old and old[k] != v}
        c.log_batch(run_id, params=[Param(k, v) for k, v in params.items() if k not in old],
                    tags=[RunTag(k, v) for k, v in {**tags, **changed}.items()])
        return run_id, True
    run = c.create_run(experiment_id(uri, experiment), run_name=run_name, tags=tags)
    c.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    return run.info.run_id, False


def log_dataset(uri: str, run_id: str, data_dir: str | Path, context: str = "training") -> None:
    """The dataset directory as the run's MLflow dataset input: name, digest (of meta.json and the Parquet files'
    names and sizes), source (its absolute path or its URI) and a profile (rows, labels)."""
    directory = open_location(absolute(str(data_dir)))
    raw = (directory / META_FILE).read_bytes()
    meta = json.loads(raw)
    h = hashlib.sha256(raw)
    for name, size in sorted(directory.files().items()):
        if name.endswith(".parquet"):
            h.update(f"{name}:{size}".encode())
    profile = {k: meta.get(k) for k in ("num_train", "num_test", "num_labels", "num_features", "multi_label")}
    dataset = Dataset(name=meta.get("name", directory.name), digest=h.hexdigest()[:16],
                      source_type=directory.scheme or "local", source=json.dumps({"uri": str(directory)}),
                      profile=json.dumps(profile))
    client(uri).log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])])


def open_training_run(cfg: RunConfig, meta, workers: int, fresh: bool = False) -> tuple[str, str, bool]:
    """Create or reopen (same name: resume; `fresh`: always create) the MLflow run of `cfg` (`meta`: its dataset's
    `DatasetMeta`) with its params, tags, description, dataset input and config.yaml: (uri, run_id, resumed)."""
    uri = resolve_uri(cfg.tracking.uri)
    tags = {"dataset": meta.name, "head": cfg.head.name, "workers": str(workers)}
    description = (f"{cfg.head.name} head on a {cfg.backbone.name} backbone, {meta.name} "
                   f"({meta.num_labels:,} labels), {workers} workers")
    run_id, resumed = start_run(uri, cfg.tracking.experiment, cfg.name, flatten(cfg.to_dict()), tags,
                                parent_run_id=cfg.tracking.parent, description=description, fresh=fresh)
    if not resumed:
        log_dataset(uri, run_id, cfg.data)
        from xlc.data.schema import SAMPLES_FILE  # here: xlc.data imports torch, which `xlc ui` never needs

        samples = Path(cfg.data) / SAMPLES_FILE
        if samples.is_file():  # an image set's sample grid, beside the run's metrics
            RunLogger(uri, run_id).artifact(samples, "dataset")
    RunLogger(uri, run_id).dict(cfg.to_dict(), "config.yaml")
    return uri, run_id, resumed


def end_run(uri: str, run_id: str, status: str = "FINISHED", attempts: int = 6) -> None:
    """Terminate the run as FINISHED, FAILED or KILLED. A SQLite store can stay locked for a few seconds by
    a write that a signal cut short (a metrics batch, the system-metrics thread): MLflow then answers
    TEMPORARILY_UNAVAILABLE, and the call is retried with backoff (about 30 s in all) before it gives up."""
    for attempt in range(attempts):
        try:
            client(uri).set_terminated(run_id, status)
            return
        except MlflowException as e:
            if e.error_code != "TEMPORARILY_UNAVAILABLE" or attempt == attempts - 1:
                raise
            time.sleep(0.5 * 2**attempt)


@contextmanager
def ending(uri: str, run_id: str) -> Iterator[None]:
    """End the run when the block does: FINISHED, KILLED on an interrupt (`KeyboardInterrupt`: SIGINT, and
    SIGTERM as `xlc train` raises it), FAILED on any other exception, which propagates."""
    try:
        yield
    except KeyboardInterrupt:
        end_run(uri, run_id, "KILLED")
        raise
    except BaseException:
        end_run(uri, run_id, "FAILED")
        raise
    end_run(uri, run_id)


class RunLogger:
    """Logging into one existing run, from any process (rank 0 of the workers, or the driver)."""

    def __init__(self, uri: str, run_id: str):
        self.client = client(uri)
        self.uri, self.run_id = uri, run_id

    @contextmanager
    def system_metrics(self, interval_seconds: float = 5.0) -> Iterator[None]:
        """MLflow's system metrics of this machine for the run while the block runs: one sample every
        `interval_seconds` (`MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL` overrides it), and one more at the end, so
        a block shorter than the interval still leaves a sample. On a resumed run the steps continue."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval_seconds, resume_logging=True,
                                       tracking_uri=self.uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()

    def metrics(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(_metric_key(k), float(v), now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def tags(self, values: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in values.items()])

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def dict(self, value: dict, file_name: str) -> None:
        self.client.log_dict(self.run_id, value, file_name)

    def text(self, value: str, file_name: str) -> None:
        self.client.log_text(self.run_id, value, file_name)


def _metric_key(name: str) -> str:
    # MLflow keys allow [A-Za-z0-9_-./ ]; '@' is kept out of stored names (p@1 -> p_at_1) and mapped back on read.
    return name.replace("@", "_at_")


def metric_name(key: str) -> str:
    return key.replace("_at_", "@")


__all__ = [
    "RunLogger",
    "end_run",
    "ending",
    "experiment_id",
    "find_run",
    "flatten",
    "git_commit",
    "log_dataset",
    "metric_name",
    "open_training_run",
    "resolve_uri",
    "source_tags",
    "start_run",
]
