"""Checkpoints: world-size-agnostic head shards, a checksummed manifest per rank, and corruption fallback.

Layout of one checkpoint directory (each rank writes its own files; Ray merges them):
    engine/                 DeepSpeed `save_checkpoint` (backbone + replicated head + optimiser)
    head_shard_{r}.pt       label-sharded head of rank r: {label_start, label_end, tensors, moments, rest}
    head_inputs.pt          a fitted head's constructor inputs (rank 0; `xlc.heads.FittedHead`)
    optimizer_sparse.pt     SparseAdam state of the sparse-gradient embedding tables (rank 0; replicated)
    rng_{r}.pt              rank r's random generator states (restored on a resume at the same world size)
    state.json              `Progress`, world size, ZeRO stage, the run config, the metrics reported with the
                            checkpoint, how many manifests to expect (rank 0)
    manifest_{r}.json       sha256 + size of every file rank r wrote
A checkpoint verifies when manifest_0 and every manifest state.json counts are there and every file they
list has its size and checksum; a resume takes the newest checkpoint of the run directory that verifies. A run
directory is a local path or any `xlc.data.location` URI (s3://...): listing, verification and pruning go
through pyarrow.fs, and only the checkpoint a resume takes is downloaded (`fetch_newest`).
Beside the checkpoint_* directories, `keep_best` keeps a copy of the one with the best metric (best_checkpoint_*;
a filesystem run directory only).
A `xlc.heads.ShardedHead` names its label-dimension state entries in `label_sharded`; on load the rows of
the new range [start, end) are cut from whichever saved shards cover them, so a run saved on 2
workers resumes on 1 or 3 with identical logits. Files load with `weights_only=True` (DeepSpeed's too:
`xlc.train.engine.load_checkpoint`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import pickle
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from xlc.data.location import Location, open_location
from xlc.errors import DataError
from xlc.heads import ShardedHead

STATE_FILE = "state.json"
PREFIX = "checkpoint_"
BEST = "best_"  # `keep_best`'s copy of the best checkpoint: best_checkpoint_*
HEAD_INPUTS_FILE = "head_inputs.pt"


@dataclasses.dataclass
class Progress:
    """Where a run stands: saved in state.json with every checkpoint, restored on resume."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    step_in_epoch: int = 0  # batches of the current epoch already trained
    train_seconds: float = 0.0  # time in training steps (evaluation and checkpoints excluded)
    samples_seen: int = 0  # over all ranks

    @classmethod
    def from_state(cls, state: dict) -> "Progress":
        return cls(**{f.name: state[f.name] for f in dataclasses.fields(cls)})


def _sha256(path: str | Path | Location) -> str:
    path = open_location(path)
    h = hashlib.sha256()
    with path.fs.open_input_stream(path.path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_file(path: str | Path, map_location="cpu", allowed: Sequence[Any] = ()) -> Any:
    """`torch.load(path, weights_only=True)`: tensors and plain data, plus the classes in `allowed`. A file holding
    any other pickled object (which an unrestricted load would construct, running its code) raises `DataError`
    naming the file; nothing in it runs."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message: advice on loading it anyway, then "WeightsUnpickler error: Unsupported global: ..."
        reason = str(e).partition("WeightsUnpickler error: ")[2].partition(" Please use")[0] or str(e)
        raise DataError(f"{path}: refusing to load it: it holds pickled objects other than weights "
                        f"({reason.strip().rstrip('.')})") from None


def write_manifest(directory: str | os.PathLike, rank: int, files: Sequence[str | os.PathLike]) -> None:
    """Record sha256 and size of `files` (local, relative to the local `directory`) as manifest_{rank}.json."""
    directory, files = Path(directory), [Path(f) for f in files]
    entries = {str(f.relative_to(directory)): {"sha256": _sha256(f), "bytes": f.stat().st_size} for f in files}
    _atomic_write_bytes(directory / f"manifest_{rank}.json", json.dumps(entries, indent=1, sort_keys=True).encode())


def verify(directory: str | Path | Location, checksums: bool = True) -> list[str]:
    """Problems found in a checkpoint directory, local or on an object store: a missing manifest (rank 0's, or of
    any of the ranks state.json counts), missing or truncated files, and with `checksums` altered ones (which
    reads every byte: on an object store, a download; without it, one listing and the manifests)."""
    directory = open_location(directory)
    sizes = directory.files()
    if "manifest_0.json" not in sizes:
        return [f"{directory}: no manifest_0.json (checkpoint incomplete)"]
    problems = []
    for manifest in sorted(n for n in sizes if "/" not in n and n.startswith("manifest_") and n.endswith(".json")):
        try:
            entries = json.loads((directory / manifest).read_text())
        except (DataError, json.JSONDecodeError) as e:
            problems.append(f"{directory / manifest}: unreadable ({e})")
            continue
        for name, want in entries.items():
            path = directory / name
            if name not in sizes:
                problems.append(f"{path}: missing")
            elif sizes[name] != want["bytes"]:
                problems.append(f"{path}: {sizes[name]} bytes, expected {want['bytes']} (truncated)")
            elif checksums and _sha256(path) != want["sha256"]:
                problems.append(f"{path}: checksum mismatch")
    if not problems and STATE_FILE in sizes:  # verified above when rank 0 listed it
        for rank in range(read_state(directory).get("manifests", 1)):
            if f"manifest_{rank}.json" not in sizes:
                problems.append(f"{directory}: no manifest_{rank}.json (rank {rank} did not finish writing)")
    return problems


def engine_files(directory: Path, rank: int) -> list[Path]:
    """The files rank `rank` wrote in DeepSpeed's checkpoint directory `directory`: ZeRO names per-rank
    partitions `*zero_pp_rank_{r}_*`, and the rest (module states at ZeRO 0-2) is written by rank 0 alone.
    By name, so it holds whether each rank saved into a directory of its own (Ray) or all into one (local)."""
    if not directory.is_dir():
        return []
    mine = f"zero_pp_rank_{rank}_"
    return sorted(p for p in directory.rglob("*") if p.is_file() and (
        mine in p.name or (rank == 0 and "zero_pp_rank_" not in p.name)))


def write_state(directory: Path, state: dict) -> Path:
    path = directory / STATE_FILE
    _atomic_write_bytes(path, json.dumps(state, indent=1, sort_keys=True).encode())
    return path


def read_state(directory: str | Path | Location) -> dict:
    return json.loads((open_location(directory) / STATE_FILE).read_text())


def save_head_inputs(directory: Path, inputs: dict) -> Path:
    """A fitted head's constructor inputs (`xlc.heads.FittedHead`): nested dicts/lists of tensors."""
    path = directory / HEAD_INPUTS_FILE
    _atomic_torch_save(inputs, path)
    return path


def load_head_inputs(directory: str | Path) -> dict:
    path = Path(directory) / HEAD_INPUTS_FILE
    return load_file(path) if path.is_file() else {}


def save_optimizer(directory: Path, name: str, optimizer: torch.optim.Optimizer) -> Path:
    """A replicated optimiser outside the DeepSpeed engine (the sparse-table Adam), as `optimizer_{name}.pt`."""
    path = directory / f"optimizer_{name}.pt"
    _atomic_torch_save(optimizer.state_dict(), path)
    return path


def load_optimizer(directory: str | Path, name: str, optimizer: torch.optim.Optimizer) -> None:
    path = Path(directory) / f"optimizer_{name}.pt"
    if not path.is_file():
        raise DataError(f"{path}: missing; the checkpoint was written without a {name} optimiser")
    optimizer.load_state_dict(load_file(path))


def save_rng(directory: Path, rank: int) -> Path:
    """This rank's random generators (dropout masks, sampled negatives) as `rng_{rank}.pt`: restored on a resume
    at the same world size, the resumed steps draw what the uninterrupted run drew."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    path = directory / f"rng_{rank}.pt"
    _atomic_torch_save(state, path)
    return path


def load_rng(directory: str | Path, rank: int) -> bool:
    """Restore this rank's generators from `rng_{rank}.pt`; False when the checkpoint has none for this rank."""
    path = Path(directory) / f"rng_{rank}.pt"
    if not path.is_file():
        return False
    state = load_file(path)
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    return True


ENGINE_MODULE_FILE = "engine/mp_rank_00_model_states.pt"  # DeepSpeed's module states (ZeRO 0-2)
MODEL_FILE = "model.pt"


def module_state(directory: str | Path) -> dict[str, torch.Tensor]:
    """The data-parallel module's fp32 weights (backbone, replicated head) from an exported model, or from a
    checkpoint written at any ZeRO stage and precision:
        ZeRO 1-3      the fp32 master partitions of every rank, reassembled by DeepSpeed's `zero_to_fp32` (ZeRO-3
                      writes no whole module, and under bf16/fp16 the module states hold 16-bit copies)
        ZeRO-0        the module states; under bf16/fp16 its parameters replaced by the optimiser's fp32 masters"""
    directory = Path(directory)
    if (directory / MODEL_FILE).is_file():
        return load_file(directory / MODEL_FILE)
    if any((directory / "engine").glob("*zero_pp_rank_*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with contextlib.redirect_stdout(sys.stderr):  # it reports progress on stdout, where `--json` answers
            return get_fp32_state_dict_from_zero_checkpoint(str(directory), tag="engine")
    from xlc.train.engine import deepspeed_globals  # DeepSpeed's optimiser state holds a few of its classes

    states = load_file(directory / ENGINE_MODULE_FILE, allowed=deepspeed_globals())
    masters = [t for group in (states.get("optimizer") or {}).get("fp32_groups", []) for t in group]
    if not masters:
        return states["module"]
    # the engine's optimiser groups hold the parameters in the module's order (`xlc.train.step.Step`)
    buffers = set(states.get("buffer_names") or ())
    names = [name for name in states["module"] if name not in buffers]
    shapes = [tuple(states["module"][name].shape) for name in names]
    if shapes != [tuple(t.shape) for t in masters]:
        raise DataError(f"{directory / ENGINE_MODULE_FILE}: the optimiser's fp32 weights do not match the module's "
                        "parameters")
    return {**states["module"], **dict(zip(names, masters))}


def export_weights(directory: str | Path, out: str | Path) -> Path:
    """The model a person reviews and reloads, without optimiser state: `model.pt` (fp32 state_dict of the
    backbone and a replicated head), each `head_shard_{r}.pt` with its label range and tensors only (no Adam
    moments), `head_inputs.pt`, `state.json` and a manifest, so `xlc eval OUT` scores it like a checkpoint."""
    directory, out = Path(directory), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.float() if v.is_floating_point() else v for k, v in module_state(directory).items()}
    written = [out / MODEL_FILE]
    _atomic_torch_save(weights, written[0])
    for path in sorted(directory.glob("head_shard_*.pt")):
        shard = load_file(path)
        shard["moments"] = {}
        written.append(out / path.name)
        _atomic_torch_save(shard, written[-1])
    if (directory / HEAD_INPUTS_FILE).is_file():
        written.append(out / HEAD_INPUTS_FILE)
        _atomic_write_bytes(written[-1], (directory / HEAD_INPUTS_FILE).read_bytes())
    if (directory / STATE_FILE).is_file():
        written.append(write_state(out, {**read_state(directory), "manifests": 1}))
    write_manifest(out, 0, written)
    return out


def checkpoint_dirs(run_dir: str | Path | Location) -> list[Location]:
    """The checkpoint_* directories of a run, oldest first: Ray names them by timestamp and `--local` by a
    counter, so the names sort by age."""
    run_dir = open_location(run_dir)
    return [run_dir / name for name in run_dir.dirs() if name.startswith(PREFIX)]


Found = TypeVar("Found")


def _newest_verified(candidates: list[Location], check: Callable[[Location], tuple[Found, list[str]]],
                     run_dir: Location | None = None) -> Found | None:
    """What check(c) -> (found, problems) finds for the last of `candidates` (oldest first) with no problems, with
    a warning for each newer one that has some. None when there are no candidates, or when every one has problems
    and no `run_dir` is given; with one, that is a `DataError` naming it and the newest candidate's first problem."""
    skipped = []
    for candidate in reversed(candidates):
        found, problems = check(candidate)
        if not problems:
            for corrupt, why in skipped:
                warnings.warn(f"checkpoint {corrupt} is corrupt ({'; '.join(why[:3])}); resuming from {candidate}",
                              stacklevel=3)
            return found
        skipped.append((candidate, problems))
    if skipped and run_dir is not None:
        raise DataError(f"all {len(skipped)} checkpoints under {run_dir} fail verification: {skipped[0][1][0]}")
    return None


def _in_place(candidate: Location) -> tuple[Location, list[str]]:
    """A candidate checked where it is: with checksums on the local filesystem, by listing on an object store."""
    return candidate, verify(candidate, checksums=candidate.is_local)


def latest_valid(candidate: str | Path) -> Path | None:
    """`candidate` (a local directory) if it verifies; else the newest older sibling checkpoint_* that does; else
    None."""
    candidate = Path(candidate)
    older = [p for p in checkpoint_dirs(candidate.parent) if p.name < candidate.name]
    found = _newest_verified([*older, open_location(candidate)], _in_place)
    return Path(found) if found is not None else None


def newest_valid(run_dir: str | Path | Location) -> Location | None:
    """The newest checkpoint under `run_dir` that verifies (warning about each newer one that does not), None
    when the run has none; `DataError` when it has checkpoints and every one fails verification. On an object
    store without checksums, which would read every byte: `fetch_newest` checks them after its download."""
    run_dir = open_location(run_dir)
    return _newest_verified(checkpoint_dirs(run_dir), _in_place, run_dir)


@contextlib.contextmanager
def fetch_newest(run_dir: str | Path | Location) -> Iterator[Path | None]:
    """`newest_valid` as a local directory: in place on the local filesystem; from an object store, downloaded to
    a temporary directory (deleted on exit) and verified with checksums there, the next older one tried when a
    download fails them. Only a checkpoint whose listing verifies is downloaded."""
    run_dir = open_location(run_dir)
    with tempfile.TemporaryDirectory(prefix="xlc-checkpoint-") as tmp:

        def check(candidate: Location) -> tuple[Path | None, list[str]]:
            if candidate.is_local:
                return Path(candidate), verify(candidate)
            problems = verify(candidate, checksums=False)
            if problems:
                return None, problems
            local = candidate.download(Path(tmp) / candidate.name)
            problems = [p.replace(str(local), str(candidate)) for p in verify(local)]
            if problems:
                shutil.rmtree(local)  # one copy at a time on the local disk
            return local, problems

        yield _newest_verified(checkpoint_dirs(run_dir), check, run_dir)


def prune(run_dir: str | Path | Location, keep: int, spare: Collection[str] = ()) -> None:
    """Delete the checkpoints of `run_dir` beyond the `keep` newest, except those named in `spare`."""
    for directory in checkpoint_dirs(run_dir)[:-keep]:
        if directory.name not in spare:
            directory.delete()


def best_dirs(run_dir: str | Path) -> list[Path]:
    """The best_checkpoint_* copies of a run (`keep_best`), oldest first (one, but for a stop mid-replacement)."""
    return sorted(p for p in Path(run_dir).glob(f"{BEST}{PREFIX}*") if p.is_dir())


def beats(value: float | None, best: float | None, order: str) -> bool:
    """Whether a checkpoint's metric `value` (None: it has none) takes the place of the kept `best` (None: none
    kept yet) under `order` "max" or "min": strictly better only, so the first to reach a value keeps its place;
    NaN never competes."""
    if value is None or math.isnan(value):
        return False
    return best is None or (value > best if order == "max" else value < best)


def keep_best(checkpoint: Path, metric: str, order: str) -> None:
    """Keep `checkpoint` as `best_{its name}` beside it when its state.json's metrics hold `metric` and the value
    `beats` the kept best's, then delete the older best. The copy is written under a temporary name and renamed,
    so a best is always there; its files are hard links where the filesystem allows (no second copy while the
    checkpoint itself is kept), else copies."""
    held = best_dirs(checkpoint.parent)
    value = read_state(checkpoint).get("metrics", {}).get(metric)
    if not beats(value, read_state(held[-1]).get("metrics", {}).get(metric) if held else None, order):
        return
    partial = checkpoint.with_name(f".{BEST}{checkpoint.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by a run stopped mid-copy
    shutil.copytree(checkpoint, partial, copy_function=_link_or_copy)
    partial.rename(checkpoint.with_name(f"{BEST}{checkpoint.name}"))
    for old in held:
        shutil.rmtree(old)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(source, target)


# ---------------------------------------------------------------- label-sharded heads

def _named_moments(head: ShardedHead, optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    return {name: dict(optimizer.state[p]) for name, p in head.named_parameters() if p in optimizer.state}


def save_head_shard(directory: Path, head: ShardedHead, optimizer: torch.optim.Optimizer, rank: int) -> Path:
    """Write rank `rank`'s head shard with its global label range, its tensors and its Adam moments."""
    state = {k: v.detach().cpu() for k, v in head.state_dict().items()}
    sharded = set(head.label_sharded)
    payload = {
        "label_start": int(head.label_start),
        "label_end": int(head.label_end),
        "num_labels": int(head.num_labels),
        "tensors": {k: v for k, v in state.items() if k in sharded},
        "rest": {k: v for k, v in state.items() if k not in sharded},
        "moments": {
            name: {k: (v.detach().cpu() if torch.is_tensor(v) else v) for k, v in m.items()}
            for name, m in _named_moments(head, optimizer).items()
        },
    }
    path = directory / f"head_shard_{rank}.pt"
    _atomic_torch_save(payload, path)
    return path


def _cut(shards: list[dict], pick, start: int, end: int) -> torch.Tensor | None:
    """Rows [start, end) of the label dimension assembled from saved shards; pick(shard) -> tensor or None."""
    pieces = []
    for s in sorted(shards, key=lambda s: s["label_start"]):
        lo, hi = max(start, s["label_start"]), min(end, s["label_end"])
        tensor = pick(s)
        if lo < hi and tensor is not None:
            pieces.append(tensor[lo - s["label_start"] : hi - s["label_start"]])
    if not pieces:
        return None
    out = torch.cat(pieces)
    assert out.shape[0] == end - start, "saved shards do not cover the label range"
    return out


def load_head_shard(directory: str | Path, head: ShardedHead, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load rows [head.label_start, head.label_end) from every saved shard (any saved world size), and the
    matching Adam moments into `optimizer` when given."""
    paths = sorted(Path(directory).glob("head_shard_*.pt"))
    if not paths:
        raise DataError(f"{directory}: checkpoint has no head_shard_*.pt files for the sharded head")
    shards = [load_file(p) for p in paths]
    if shards[0]["num_labels"] != head.num_labels:
        raise DataError(f"{paths[0]}: saved head has {shards[0]['num_labels']} labels, this run {head.num_labels}")
    start, end = int(head.label_start), int(head.label_end)
    state = dict(shards[0]["rest"])
    for key in head.label_sharded:
        state[key] = _cut(shards, lambda s: s["tensors"].get(key), start, end)
    head.load_state_dict({k: v for k, v in state.items() if v is not None})
    if optimizer is None:
        return
    params = dict(head.named_parameters())
    for name in shards[0]["moments"]:
        moments = {}
        for key, value in shards[0]["moments"][name].items():
            if torch.is_tensor(value) and value.dim() > 0 and name in head.label_sharded:
                value = _cut(shards, lambda s: s["moments"].get(name, {}).get(key), start, end)
            moments[key] = value.to(params[name].device) if torch.is_tensor(value) and value.dim() > 0 else value
        optimizer.state[params[name]] = moments
