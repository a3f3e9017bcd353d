"""The one dataset-directory writer every builder and converter uses: temp dir, sharded Parquet, rename at the end."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xlc.data.collate import list_parts
from xlc.data.schema import (FEAT_IDX, LABELS, LABELS_FILE, LABELS_SCHEMA, META_FILE, SPLITS, TEXT, DatasetMeta,
                             row_schema)
from xlc.errors import ConfigError

ROWS_PER_FILE = 100_000
# Label and feature ids repeat (power-law frequencies), so dictionary pages shrink them; feature values are
# mostly distinct floats, where trying a dictionary first costs about a quarter of the write time for little gain.
_DICTIONARY_COLUMNS = [f"{LABELS}.list.element", f"{FEAT_IDX}.list.element", TEXT]


def check_out_dir(out_dir: str | Path, overwrite: bool) -> None:
    """Refuse a non-empty OUT_DIR unless overwriting (builders call it first, before any slow work)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"OUT_DIR {out_dir} exists and is not empty; remove it or pass --overwrite")


class DatasetWriter:
    """Writes `OUT_DIR` as a temp sibling and renames it into place only when `finish()` succeeds.

    Use as a context manager: an exception inside the block removes the temp dir, leaving no partial output.
    Rows arrive through `write(split, table)` in any chunking; files hold `rows_per_file` rows each and
    train label counts are accumulated for labels.parquet as rows pass.
    """

    def __init__(self, out_dir: str | Path, meta: DatasetMeta, *, rows_per_file: int = ROWS_PER_FILE,
                 overwrite: bool = False):
        self.out_dir = Path(out_dir)
        check_out_dir(self.out_dir, overwrite)
        self.meta = meta
        self.rows_per_file = rows_per_file
        self.schema = row_schema(sparse=meta.sparse, text=meta.text, image=meta.image is not None)
        self.train_counts = np.zeros(meta.num_labels, dtype=np.int64)
        self.rows = {s: 0 for s in SPLITS}
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._file_rows = {s: 0 for s in SPLITS}
        self._files = {s: 0 for s in SPLITS}
        self.tmp: Path | None = None

    def __enter__(self) -> "DatasetWriter":
        try:
            self.out_dir.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.tmp-", dir=self.out_dir.parent))
        except OSError as e:
            raise ConfigError(f"OUT_DIR {self.out_dir}: cannot write there ({e.strerror}: {e.filename})") from None
        for split in SPLITS:
            (self.tmp / split).mkdir()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()
        if self.tmp is not None and self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def path(self) -> Path:
        """The temp directory, for builders that store extra files (vocabulary, ...) beside the splits."""
        assert self.tmp is not None, "use DatasetWriter as a context manager"
        return self.tmp

    def write(self, split: str, table: pa.Table) -> None:
        """Append rows (columns named as in the schema, any order, types cast) to `split`."""
        assert split in SPLITS, split
        table = table.select(self.schema.names).cast(self.schema)
        if split == "train" and table.num_rows:
            _, labels = list_parts(table.column(LABELS))
            self.train_counts += np.bincount(labels, minlength=self.meta.num_labels)
        start = 0
        while start < table.num_rows:
            writer = self._writer(split)
            take = min(self.rows_per_file - self._file_rows[split], table.num_rows - start)
            writer.write_table(table.slice(start, take))
            start += take
            self._file_rows[split] += take
            if self._file_rows[split] == self.rows_per_file:
                writer.close()
                del self._writers[split]
        self.rows[split] += table.num_rows

    def _writer(self, split: str) -> pq.ParquetWriter:
        if split not in self._writers:
            path = self.path / split / f"part-{self._files[split]:05d}.parquet"
            self._writers[split] = pq.ParquetWriter(path, self.schema, use_dictionary=_DICTIONARY_COLUMNS)
            self._files[split] += 1
            self._file_rows[split] = 0
        return self._writers[split]

    def finish(self, label_names: list[str] | pa.Array | None = None) -> Path:
        """Write labels.parquet (names default to the ids as strings) and meta.json, then rename into OUT_DIR."""
        for w in self._writers.values():
            w.close()
        self._writers.clear()
        for split in SPLITS:  # a split with no rows still gets one (empty) file with the schema
            if self._files[split] == 0:
                pq.write_table(self.schema.empty_table(), self.path / split / "part-00000.parquet")
        n = self.meta.num_labels
        ids = pa.array(np.arange(n, dtype=np.int32))
        names = pa.array(label_names, pa.string()) if label_names is not None else ids.cast(pa.string())
        assert len(names) == n, (len(names), n)
        labels = pa.table([ids, names,
                           pa.array(self.train_counts)], schema=LABELS_SCHEMA)
        pq.write_table(labels, self.path / LABELS_FILE)
        self.meta.num_train, self.meta.num_test = self.rows["train"], self.rows["test"]
        (self.path / META_FILE).write_text(self.meta.to_json() + "\n")
        if self.out_dir.exists():
            shutil.rmtree(self.out_dir)
        self.path.rename(self.out_dir)
        self.tmp = None
        return self.out_dir


def sparse_table(labels: pa.Array, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray,
                 text: list[str] | None = None) -> pa.Table:
    """Rows from a label list array and CSR features (indptr [B+1], indices/values [nnz]), plus optional text."""
    offsets = pa.array(np.asarray(indptr, dtype=np.int32))
    columns = {
        "labels": labels,
        "feat_idx": pa.ListArray.from_arrays(offsets, pa.array(np.asarray(indices, dtype=np.int32))),
        "feat_val": pa.ListArray.from_arrays(offsets, pa.array(np.asarray(values, dtype=np.float32))),
    }
    if text is not None:
        columns["text"] = pa.array(text, pa.string())
    return pa.table(columns)


def label_lists(offsets: np.ndarray, values: np.ndarray) -> pa.Array:
    """list<int32> array from offsets [B+1] and label ids [nnz]."""
    return pa.ListArray.from_arrays(pa.array(np.asarray(offsets, dtype=np.int32)),
                                    pa.array(np.asarray(values, dtype=np.int32)))
