"""What a launcher does around the worker loop, for the Ray trainer and `--local` alike; no Ray, no MLflow.

Before any worker starts: absolute paths, the dataset and model checked (bad values exit 2 before Ray,
MLflow or DeepSpeed start), the checkpoint to resume from (or none, or `--restart`), a fitted head's inputs
computed once. Dataset and checkpoints may lie on the local filesystem or behind any pyarrow.fs URI
(`xlc.data.location`). During: the epoch order of `train.data_order: exact`. After: the metrics a run reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from xlc import data as xdata
from xlc.backbones import backbone_input
from xlc.config import RUNS_DIR, HeadConfig, RunConfig
from xlc.data.location import Location, absolute, open_location
from xlc.data.schema import FEAT_IDX, FEAT_VAL, IMAGE, LABELS, TEXT, DatasetMeta
from xlc.errors import ConfigError, DataError
from xlc.heads import fit_head_inputs, needs_training_split
from xlc.train import checkpoint as ckpt
from xlc.train.model import check_model

RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of the checkpoints it manages
RESTART = "rerun with --restart to start from step 0"
REPORTED = ("p@", "ndcg@", "psp@", "acc", "recall@", "train_seconds", "samples_per_second", "peak_memory_bytes",
            "head_parameters")


def prepare(cfg: RunConfig) -> tuple[RunConfig, DatasetMeta]:
    """`cfg` with absolute paths (Ray workers run in per-run directories), `head.name: auto` resolved, and its
    checked dataset meta; a `data` or `storage.path` URI that no pyarrow filesystem opens is a `ConfigError`
    naming the key."""
    cfg = dataclasses.replace(
        cfg, data=absolute(cfg.data), deepspeed=cfg.deepspeed and absolute(cfg.deepspeed),
        storage=dataclasses.replace(cfg.storage, path=cfg.storage.path and absolute(cfg.storage.path)))
    data = open_location(cfg.data, "data")
    run_dir(cfg)  # a storage.path URI that no filesystem opens: ConfigError now, not in a worker
    meta = xdata.read_meta(data)
    xdata.check_files(data)
    if cfg.head.name == "auto":
        cfg = dataclasses.replace(cfg, head=HeadConfig(name=default_head(meta, cfg.workers)))
    check_model(cfg, meta)
    return cfg, meta


# From this many labels a replicated classifier is sharded over the workers (or, on one, scored in chunks).
SHARD_FROM_LABELS = 100_000


def default_head(meta: DatasetMeta, workers: int) -> str:
    """The head of `head.name: auto`: one-vs-all `bce` on multi-label data (the best xlc head on the real
    multi-label sets in docs/benchmarks.md: +3.4 P@1 over pick-all-label softmax on debian-depends), the
    full softmax on single-label data; from `SHARD_FROM_LABELS` labels their sharded forms on several
    workers and, for softmax on one, the same function in label chunks."""
    large = meta.num_labels >= SHARD_FROM_LABELS
    if meta.multi_label:
        return "sharded_bce" if large and workers > 1 else "bce"
    if large:
        return "sharded_softmax" if workers > 1 else "chunked_softmax"
    return "softmax"


def storage_path(cfg: RunConfig) -> str:
    """Where the run's checkpoints live: `storage.path` (a path or a pyarrow.fs URI), or ./xlc-runs/checkpoints."""
    return cfg.storage.path or str((RUNS_DIR / "checkpoints").resolve())


def run_dir(cfg: RunConfig) -> Location:
    """The run's checkpoint directory `storage_path/name`: on a filesystem (local, or shared by a cluster's nodes)
    or an object store (s3://...)."""
    return open_location(storage_path(cfg), "storage.path") / cfg.name


def check_shared_storage(cfg: RunConfig, nodes: int) -> None:
    """On `nodes` > 1 machines, every worker writes its checkpoint shard under `storage_path(cfg)` and the
    driver resumes from what it finds there, so a local disk would split a checkpoint across machines.
    `ConfigError` naming `storage.path`, the node count and the fixes, unless the path is an object store URI
    (s3://, gs://, ...) or `storage.shared` declares a filesystem every node mounts at that path (NFS)."""
    root = storage_path(cfg)
    if nodes > 1 and ("://" not in root or root.startswith("file://")) and not cfg.storage.shared:
        given = cfg.storage.path or f"null (default: {RUNS_DIR / 'checkpoints'})"
        raise ConfigError(
            f"storage.path={given}: a local disk, but the cluster has {nodes} nodes, so each would hold only its "
            "own workers' checkpoint shards; use an object store (storage.path=s3://BUCKET/PATH) or a filesystem "
            "every node mounts at that path (NFS) and set storage.shared=true")


def resume_point(run: str | Path | Location) -> Location | None:
    """The newest verified checkpoint of a run directory (None: a new run), checked where it lies (on an object
    store by listing: `restored` checks the checksums after its download); `DataError` naming the directory when
    every checkpoint there fails verification."""
    try:
        return ckpt.newest_valid(run)
    except DataError as e:
        raise DataError(f"{e}; {RESTART}") from None


@contextlib.contextmanager
def restored(run: str | Path | Location) -> Iterator[Path | None]:
    """What a worker resumes from: the newest checkpoint of the run directory that verifies, as a local directory
    (downloaded from an object store: `xlc.train.checkpoint.fetch_newest`); None for a new run."""
    with contextlib.ExitStack() as stack:
        try:
            found = stack.enter_context(ckpt.fetch_newest(run))
        except DataError as e:
            raise DataError(f"{e}; {RESTART}") from None
        yield found


def resume_hint(cfg: RunConfig) -> str:
    """What an interrupted `xlc train` says: the step the same command resumes from."""
    run = run_dir(cfg)
    with warnings.catch_warnings():  # one line: a checkpoint cut short by the interrupt is skipped silently
        warnings.simplefilter("ignore")
        try:
            found = resume_point(run)
        except DataError:
            return f"interrupted; no checkpoint under {run} verifies; {RESTART}"
    step = ckpt.read_state(found)["step"] if found else 0
    return f"interrupted; rerun the same command to resume from step {step}"


def recorded_by_ray(run: str | Path | Location) -> set[str]:
    """The checkpoint directory names Ray Train's snapshot of its checkpoints refers to (Ray prunes those itself,
    and refuses to start when one is missing). Read as text, so no Ray import."""
    run = open_location(run)
    snapshot = run / RAY_SNAPSHOT
    text = snapshot.read_text() if snapshot.exists() else ""
    return {c.name for c in ckpt.checkpoint_dirs(run) if c.name in text}


def prune_unrecorded(run: str | Path | Location, keep: int, resume: Location | None = None) -> None:
    """Delete the checkpoints beyond the `keep` newest that Ray never recorded (each run stopped between writing
    one and Ray's record of it leaves one), never the checkpoint a run is about to resume from."""
    ckpt.prune(run, keep, spare=recorded_by_ray(run) | ({resume.name} if resume else set()))


def keep_best(cfg: RunConfig, checkpoint: Path) -> None:
    """`storage.keep_best`: keep `checkpoint` (complete: every rank's files) as the run's best when it beats the
    one kept (`checkpoint.keep_best`)."""
    if cfg.storage.keep_best is not None:
        ckpt.keep_best(checkpoint, cfg.storage.keep_best, cfg.storage.keep_best_order)


def start_over(cfg: RunConfig) -> None:
    """`--restart`: delete the run's checkpoints (with what Ray recorded of them), so it trains from step 0."""
    run_dir(cfg).delete()


def fit_inputs(cfg: RunConfig) -> dict:
    """A fitted head's constructor inputs from the training split ({} for every other head, without FAISS)."""
    if not needs_training_split(cfg.head.name):
        return {}
    from xlc.baselines.label_space import training_split  # FAISS: only for the heads that need it

    return fit_head_inputs(cfg.head.name, training_split(cfg.data, cfg.train.seed), cfg.head.options)


def train_columns(backbone: str) -> list[str]:
    """The train-split columns a backbone reads: labels and sparse features, text, or the image."""
    return {"sparse": [LABELS, FEAT_IDX, FEAT_VAL], "text": [LABELS, TEXT], "image": [LABELS, IMAGE]}[
        backbone_input(backbone)]


def exact_epoch(cfg: RunConfig, rank: int, world: int, epoch: int, drop_last: bool) -> Iterator[pa.Table]:
    """This rank's batches of one epoch under `data_order: exact`, a function of (seed, epoch, rank, world)
    alone: the epoch's seeded shuffle (`xlc.data.iter_tables`) cut into rounds of `world` batches, batch r of
    each round to rank r; a last, partial round is split evenly (its rows differ by at most one between ranks;
    dropped with `drop_last`), so every rank takes as many steps and each step's global batch is about `world`
    x `len(batch)` rows. A run resumed at batch j of an epoch skips the same j batches."""
    tables = xdata.iter_tables(cfg.data, "train", cfg.train.batch_size, columns=train_columns(cfg.backbone.name),
                               shuffle_seed=cfg.train.seed + epoch)
    round_: list[pa.Table] = []
    for table in tables:
        round_.append(table)
        if len(round_) == world and table.num_rows == cfg.train.batch_size:
            yield round_[rank]
            round_ = []
    rows = sum(t.num_rows for t in round_)
    if round_ and not drop_last and rows >= world:  # every rank needs a row: each step runs collectives
        last = pa.concat_tables(round_)
        yield last.slice(rank * rows // world, (rank + 1) * rows // world - rank * rows // world)


def reported(metrics: dict) -> dict:
    """The final metrics a run prints and returns (design.md §3)."""
    return {k: v for k, v in metrics.items() if k.startswith(REPORTED)}
