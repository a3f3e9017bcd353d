"""What a launcher does around the worker loop, for the Ray trainer and `--local` alike; no Ray, no MLflow.

Before any worker starts: absolute paths, the dataset and model checked (bad values exit 2 before Ray,
MLflow or DeepSpeed start), the checkpoint to resume from (or none, or `--restart`), a fitted head's inputs
computed once. During: the epoch order of `train.data_order: exact`. After: the metrics a run reports.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from xlc import data as xdata
from xlc.backbones import backbone_input
from xlc.config import RUNS_DIR, RunConfig
from xlc.data.schema import FEAT_IDX, FEAT_VAL, LABELS, TEXT, DatasetMeta
from xlc.errors import ConfigError, DataError
from xlc.heads import fit_head_inputs, needs_training_split
from xlc.train import checkpoint as ckpt
from xlc.train.model import check_model

RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of the checkpoints it manages
REPORTED = ("p@", "ndcg@", "psp@", "acc", "recall@", "train_seconds", "samples_per_second", "peak_memory_bytes",
            "head_parameters")


def _absolute(path: str | None) -> str | None:
    """A filesystem path made absolute (Ray workers run in per-run directories); None and URIs (s3://) as given."""
    return path if not path or "://" in path else str(Path(path).resolve())


def prepare(cfg: RunConfig) -> tuple[RunConfig, DatasetMeta]:
    """`cfg` with absolute paths (Ray workers run in per-run directories), and its checked dataset meta."""
    cfg = dataclasses.replace(cfg, data=_absolute(cfg.data), deepspeed=_absolute(cfg.deepspeed),
                              storage=dataclasses.replace(cfg.storage, path=_absolute(cfg.storage.path)))
    meta = xdata.read_meta(cfg.data)
    xdata.check_files(cfg.data)
    check_model(cfg, meta)
    return cfg, meta


def storage_path(cfg: RunConfig) -> str:
    """Where the run's checkpoints live: `storage.path`, or ./xlc-runs/checkpoints."""
    return cfg.storage.path or str((RUNS_DIR / "checkpoints").resolve())


def run_dir(cfg: RunConfig) -> Path | None:
    """The run's checkpoint directory `storage_path/name` when the storage is a filesystem path (local, or shared
    by a cluster's nodes); None for an object store (s3://...), where only Ray reads the checkpoints."""
    root = storage_path(cfg)
    return None if "://" in root else Path(root) / cfg.name


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


def resume_point(directory: Path | None) -> Path | None:
    """The newest verified checkpoint of a run directory (None: a new run, or no directory to look in);
    `DataError` naming the directory when every checkpoint there fails verification."""
    if directory is None:
        return None
    try:
        return ckpt.newest_valid(directory)
    except DataError as e:
        raise DataError(f"{e}; rerun with --restart to start from step 0") from None


def resume_hint(cfg: RunConfig) -> str:
    """What an interrupted `xlc train` says: the step the same command resumes from."""
    directory = run_dir(cfg)
    if directory is None:
        return "interrupted; rerun the same command to resume from the last checkpoint Ray recorded"
    with warnings.catch_warnings():  # one line: a checkpoint cut short by the interrupt is skipped silently
        warnings.simplefilter("ignore")
        try:
            found = resume_point(directory)
        except DataError:
            return f"interrupted; no checkpoint under {directory} verifies; rerun with --restart to start from step 0"
    step = ckpt.read_state(found)["step"] if found else 0
    return f"interrupted; rerun the same command to resume from step {step}"


def recorded_by_ray(directory: Path) -> set[str]:
    """The checkpoint directory names Ray Train's snapshot of its checkpoints refers to (Ray prunes those itself,
    and refuses to start when one is missing). Read as text, so no Ray import."""
    snapshot = directory / RAY_SNAPSHOT
    text = snapshot.read_text() if snapshot.is_file() else ""
    return {p.name for p in ckpt.checkpoint_dirs(directory) if p.name in text}


def prune_unrecorded(directory: Path, keep: int, resume: Path | None = None) -> None:
    """Delete the checkpoints beyond the `keep` newest that Ray never recorded (each run stopped between writing
    one and Ray's record of it leaves one), never the checkpoint a run is about to resume from."""
    ckpt.prune(directory, keep, spare=recorded_by_ray(directory) | ({resume.name} if resume else set()))


def start_over(cfg: RunConfig) -> None:
    """`--restart`: delete the run's checkpoints (with what Ray recorded of them), so it trains from step 0."""
    fs, root = pafs.FileSystem.from_uri(storage_path(cfg))
    path = f"{root.rstrip('/')}/{cfg.name}"
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def fit_inputs(cfg: RunConfig) -> dict:
    """A fitted head's constructor inputs from the training split ({} for every other head, without FAISS)."""
    if not needs_training_split(cfg.head.name):
        return {}
    from xlc.baselines.label_space import training_split  # FAISS: only for the heads that need it

    return fit_head_inputs(cfg.head.name, training_split(cfg.data, cfg.train.seed), cfg.head.options)


def train_columns(backbone: str) -> list[str]:
    """The train-split columns a backbone reads: labels and sparse features, or labels and text."""
    return [LABELS, FEAT_IDX, FEAT_VAL] if backbone_input(backbone) == "sparse" else [LABELS, TEXT]


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
