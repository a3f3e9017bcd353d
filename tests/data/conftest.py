"""`make_dataset`: a dataset directory written with plain pyarrow (independent of data_tools' writer);
`random_rows`: rows to fill it with."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def _random_rows(n: int, num_labels: int, num_features: int, max_labels: int, seed: int = 0):
    """n rows of (labels, feat_idx, feat_val) python lists, some rows with no labels or no features."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        labels = rng.choice(num_labels, size=rng.integers(0, max_labels + 1), replace=False).tolist()
        idx = rng.choice(num_features, size=rng.integers(0, 6), replace=False).tolist()
        rows.append((labels, idx, rng.random(len(idx)).astype(np.float32).tolist()))
    return rows


def write_rows(path, rows, text=None):
    table = pa.table({
        "labels": pa.array([r[0] for r in rows], pa.list_(pa.int32())),
        "feat_idx": pa.array([r[1] for r in rows], pa.list_(pa.int32())),
        "feat_val": pa.array([r[2] for r in rows], pa.list_(pa.float32())),
        **({"text": pa.array(text, pa.string())} if text is not None else {}),
    })
    pq.write_table(table, path, row_group_size=50)


@pytest.fixture
def random_rows():
    """`_random_rows` above, handed to test modules (they never import a conftest)."""
    return _random_rows


@pytest.fixture
def make_dataset(tmp_path):
    def make(train_rows, test_rows=(), *, num_labels, num_features, multi_label, rows_per_file=10**9, text=False):
        root = tmp_path / "ds"
        for split, rows in (("train", list(train_rows)), ("test", list(test_rows))):
            (root / split).mkdir(parents=True)
            for i, start in enumerate(range(0, max(len(rows), 1), rows_per_file)):
                chunk = rows[start:start + rows_per_file]
                write_rows(root / split / f"part-{i:05d}.parquet", chunk,
                           text=[f"row {start + j}" for j in range(len(chunk))] if text else None)
        counts = np.zeros(num_labels, dtype=np.int64)
        for labels, _, _ in train_rows:
            counts[[lab for lab in labels if lab < num_labels]] += 1
        pq.write_table(pa.table({"label_id": pa.array(np.arange(num_labels, dtype=np.int32)),
                                 "name": pa.array([f"L{i}" for i in range(num_labels)]),
                                 "train_count": pa.array(counts)}), root / "labels.parquet")
        meta = dict(name="t", num_labels=num_labels, num_features=num_features, text=text,
                    multi_label=multi_label, source="test", created_by="test")
        (root / "meta.json").write_text(json.dumps(meta))
        return root

    return make
