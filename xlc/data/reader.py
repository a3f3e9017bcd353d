"""Reading a dataset directory: split files, streamed batches in bounded memory, label table."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xlc.data.collate import Batch, collate
from xlc.data.location import Location, open_location
from xlc.data.schema import LABELS, LABELS_FILE, LABELS_SCHEMA, SPLITS, read_meta, validate_table
from xlc.errors import ConfigError, DataError


def split_files(directory: str | Path | Location, split: str) -> list[Location]:
    """Sorted Parquet files of `DIR/{split}/` (DIR: a path or a `xlc.data.location` URI); `DataError` if the split is
    missing or empty."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: expected one of {', '.join(SPLITS)}")
    folder = open_location(directory) / split
    files = [folder / name for name in sorted(folder.files()) if "/" not in name and name.endswith(".parquet")]
    if not files:
        raise DataError(f"{folder}: no *.parquet files; a dataset directory needs {'/'.join(SPLITS)} splits")
    return files


def check_files(directory: str | Path | Location) -> None:
    """Every Parquet file of a dataset directory (labels.parquet and both splits) has a readable footer: a
    truncated or half-copied file has none. Reads only the footers, so a launcher runs it before any worker
    starts; `DataError` with one line per unreadable file, naming it."""
    root = open_location(directory)
    problems = []
    for path in [root / LABELS_FILE] + [path for split in SPLITS for path in split_files(root, split)]:
        try:
            pq.read_metadata(path.path, filesystem=path.fs)
        except (pa.ArrowInvalid, OSError) as e:
            problems.append(f"{path}: not a readable Parquet file ({e}); rebuild or copy the dataset again")
    if problems:
        raise DataError("\n".join(problems))


def _rebatched(pieces: Iterator[pa.RecordBatch], batch_size: int) -> Iterator[pa.Table]:
    """Regroup record batches of any length (file ends make short ones) into tables of exactly `batch_size`
    rows; the last may be shorter. Holds at most about two batches of rows."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for piece in pieces:
        pending.append(piece)
        held += piece.num_rows
        if held < batch_size:
            continue
        table = pa.Table.from_batches(pending)
        start = 0
        while held - start >= batch_size:
            yield table.slice(start, batch_size)
            start += batch_size
        rest = table.slice(start)
        pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(pending)


def _shuffled(pieces: Iterator[pa.RecordBatch], window: int, rng: np.random.Generator) -> Iterator[pa.Table]:
    """Local shuffle: permute rows within consecutive windows of about `window` rows (bounded memory)."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for piece in pieces:
        pending.append(piece)
        held += piece.num_rows
        if held >= window:
            yield pa.Table.from_batches(pending).take(rng.permutation(held))
            pending, held = [], 0
    if held:
        yield pa.Table.from_batches(pending).take(rng.permutation(held))


def iter_tables(
    directory: str | Path | Location,
    split: str,
    batch_size: int,
    *,
    rank: int = 0,
    world: int = 1,
    columns: Sequence[str] | None = None,
    shuffle_seed: int | None = None,
    shuffle_window: int = 65536,
    validate: bool = True,
) -> Iterator[pa.Table]:
    """Stream `split` as Arrow tables of `batch_size` rows; batch i goes to rank i % world.

    Memory is bounded by one Parquet record batch plus two output batches (plus `shuffle_window` rows when
    shuffling), whatever the file sizes. `shuffle_seed` (e.g. seed + epoch; the same on every rank) shuffles
    the file order and rows within windows of `shuffle_window` rows; builders already store rows in random
    order, so this only decorrelates epochs. Every row is validated (schema, label and feature range) as it
    is read, so errors name file and row.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}: expected a positive integer")
    if not 0 <= rank < world:
        raise ConfigError(f"rank={rank}, world={world}: expected 0 <= rank < world")
    meta = read_meta(directory)
    files = split_files(directory, split)
    if columns is not None and LABELS not in columns:
        columns = [LABELS, *columns]
    rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    if rng is not None:
        files = [files[i] for i in rng.permutation(len(files))]

    def pieces() -> Iterator[pa.RecordBatch]:
        for path in files:
            try:
                # pre_buffer (pyarrow's default) reads every column chunk of the file up front: the whole
                # file in memory; off + a 1 MiB read buffer keeps memory at about one row group
                reader = pq.ParquetFile(path.path, filesystem=path.fs, pre_buffer=False, buffer_size=1 << 20)
            except (pa.ArrowInvalid, OSError) as e:
                raise DataError(f"{path}: not a readable Parquet file ({e})") from None
            missing = [c for c in columns or () if c not in reader.schema_arrow.names]
            if missing:
                raise DataError(f"{path}: missing column(s) {missing}; it has {reader.schema_arrow.names}")
            row = 0
            for piece in reader.iter_batches(batch_size=min(batch_size, 65536), columns=columns):
                if validate:
                    validate_table(piece, path, meta, row_offset=row)
                row += piece.num_rows
                yield piece

    stream = pieces() if rng is None else (b for t in _shuffled(pieces(), shuffle_window, rng) for b in t.to_batches())
    for i, table in enumerate(_rebatched(stream, batch_size)):
        if i % world == rank:
            yield table


def iter_batches(directory: str | Path | Location, split: str, batch_size: int, **stream) -> Iterator[Batch]:
    """`iter_tables` collated into torch `Batch`es (targets padded per `meta.json`'s multi_label); `stream`
    takes iter_tables' keyword options: rank, world, columns, shuffle_seed, shuffle_window."""
    multi_label = read_meta(directory).multi_label
    for table in iter_tables(directory, split, batch_size, **stream):
        yield collate(table, multi_label)


def _labels_table(directory: str | Path | Location) -> pa.Table:
    path = open_location(directory) / LABELS_FILE
    if not path.exists():
        raise DataError(f"{path}: not found; a dataset directory needs labels.parquet")
    table = pq.read_table(path.path, filesystem=path.fs)
    for f in LABELS_SCHEMA:
        if f.name not in table.schema.names or table.schema.field(f.name).type != f.type:
            raise DataError(f"{path}: expected column {f.name!r} of type {f.type}; schema is {table.schema}")
    num_labels = read_meta(directory).num_labels
    ids = table.column("label_id").to_numpy()
    if len(ids) != num_labels or not np.array_equal(np.sort(ids), np.arange(num_labels)):
        raise DataError(f"{path}: label_id must be exactly 0..{num_labels - 1} (meta.json num_labels)")
    return table.take(np.argsort(ids, kind="stable"))


def label_counts(directory: str | Path | Location) -> np.ndarray:
    """int64 [num_labels]: how many training rows carry each label (labels.parquet train_count)."""
    return _labels_table(directory).column("train_count").to_numpy().astype(np.int64)


def label_names(directory: str | Path | Location) -> list[str]:
    """Label strings indexed by label id."""
    return _labels_table(directory).column("name").to_pylist()
