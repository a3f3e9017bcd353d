"""Streaming reads: exact batches across file boundaries, rank split, validation errors naming file and row,
bounded memory on a split much larger than a batch."""

import json
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from xlc.data import collate, iter_batches, label_counts, label_names, read_meta, split_files
from xlc.errors import DataError


def _all_labels(batches):
    return [row for b in batches for row in b.targets.tolist()]


def test_iter_batches_exact_sizes_across_files(make_dataset, random_rows):
    rows = random_rows(103, num_labels=20, num_features=40, max_labels=3)
    root = make_dataset(rows, rows[:5], num_labels=20, num_features=40, multi_label=True, rows_per_file=17)
    assert len(split_files(root, "train")) == 7
    batches = list(iter_batches(root, "train", 10))
    assert [len(b) for b in batches] == [10] * 10 + [3]
    expected = collate(pa.concat_tables(pq.read_table(f) for f in split_files(root, "train")), True)
    got = [r + [-1] * (expected.targets.shape[1] - len(r)) for r in _all_labels(batches)]
    assert got == expected.targets.tolist()
    assert torch.equal(torch.cat([b.feat_idx for b in batches]), expected.feat_idx)


def test_ranks_partition_batches_round_robin(make_dataset, random_rows):
    rows = random_rows(95, num_labels=20, num_features=40, max_labels=1)
    root = make_dataset(rows, num_labels=20, num_features=40, multi_label=False, rows_per_file=30)
    whole = [b.targets for b in iter_batches(root, "train", 8)]
    for world in (2, 3):
        for rank in range(world):
            mine = [b.targets for b in iter_batches(root, "train", 8, rank=rank, world=world)]
            assert all(torch.equal(a, b) for a, b in zip(mine, whole[rank::world], strict=True))


def test_shuffle_is_a_seeded_permutation(make_dataset):
    rows = [([i % 50], [i], [1.0]) for i in range(200)]
    root = make_dataset(rows, num_labels=50, num_features=200, multi_label=False, rows_per_file=64)
    order = lambda seed: torch.cat([b.feat_idx for b in iter_batches(root, "train", 16, shuffle_seed=seed)])
    a, b, c = order(1), order(1), order(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sorted(a.tolist()) == list(range(200)) and a.tolist() != list(range(200))


def test_columns_subset_keeps_labels(make_dataset, random_rows):
    root = make_dataset(random_rows(20, 5, 9, 2), num_labels=5, num_features=9, multi_label=True, text=True)
    batch = next(iter_batches(root, "train", 4, columns=["text"]))
    assert batch.feat_idx is None and batch.text == ["row 0", "row 1", "row 2", "row 3"]


def test_label_out_of_range_names_file_and_row(make_dataset, random_rows):
    rows = random_rows(40, num_labels=5, num_features=9, max_labels=2, seed=3)
    rows[33] = ([1, 7], [0], [1.0])
    root = make_dataset(rows, num_labels=5, num_features=9, multi_label=True, rows_per_file=20)
    with pytest.raises(DataError, match=r"part-00001\.parquet, row 13: labels value 7 out of range \[0, 5\)"):
        list(iter_batches(root, "train", 8))


def test_feature_out_of_range_and_length_mismatch(make_dataset):
    root = make_dataset([([0], [3, 9], [1.0, 1.0])], num_labels=2, num_features=9, multi_label=False)
    with pytest.raises(DataError, match=r"row 0: feat_idx value 9 out of range \[0, 9\)"):
        list(iter_batches(root, "train", 8))
    pq.write_table(pa.table({"labels": pa.array([[0]], pa.list_(pa.int32())),
                             "feat_idx": pa.array([[1, 2]], pa.list_(pa.int32())),
                             "feat_val": pa.array([[1.0]], pa.list_(pa.float32()))}), root / "train" / "part-00000.parquet")
    with pytest.raises(DataError, match="row 0: feat_idx and feat_val have different lengths"):
        list(iter_batches(root, "train", 8))


def test_wrong_schema_and_missing_split(make_dataset, tmp_path):
    root = make_dataset([([0], [1], [1.0])], num_labels=2, num_features=3, multi_label=False)
    bad = pa.table({"labels": pa.array([[0]], pa.list_(pa.int64())), "feat_idx": pa.array([[1]], pa.list_(pa.int32())),
                    "feat_val": pa.array([[1.0]], pa.list_(pa.float32()))})
    pq.write_table(bad, root / "train" / "part-00009.parquet")
    with pytest.raises(DataError, match=r"part-00009\.parquet: column 'labels' has type list<\w+: int64>; expected list<item: int32>"):
        list(iter_batches(root, "train", 8))
    with pytest.raises(DataError, match="no \\*.parquet files"):
        split_files(tmp_path, "train")


def test_meta_errors(tmp_path):
    with pytest.raises(DataError, match="meta.json: not found"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"name": "x", "multi_label": False, "text": True}))
    with pytest.raises(DataError, match="missing key\\(s\\) num_labels"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"name": "x", "num_labels": 3, "multi_label": False}))
    with pytest.raises(DataError, match="needs num_features"):
        read_meta(tmp_path)


def test_label_table(make_dataset):
    rows = [([0, 2], [0], [1.0]), ([2], [1], [1.0])]
    root = make_dataset(rows, num_labels=4, num_features=2, multi_label=True)
    assert label_counts(root).tolist() == [1, 0, 2, 0] and label_counts(root).dtype == np.int64
    assert label_names(root) == ["L0", "L1", "L2", "L3"]


def test_streaming_memory_is_bounded(tmp_path, make_dataset):
    """A 200k-row file (~25 MB of Arrow data) streamed in batches of 1,000: peak Python-tracked allocation
    stays a small fraction of the file (Arrow buffers are reported by pyarrow's memory pool)."""
    n, nnz = 200_000, 16
    rng = np.random.default_rng(0)
    offsets = pa.array(np.arange(0, (n + 1) * nnz, nnz, dtype=np.int32))
    table = pa.table({
        "labels": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), pa.array(rng.integers(0, 1000, n, dtype=np.int32))),
        "feat_idx": pa.ListArray.from_arrays(offsets, pa.array(rng.integers(0, 5000, n * nnz, dtype=np.int32))),
        "feat_val": pa.ListArray.from_arrays(offsets, pa.array(rng.random(n * nnz, dtype=np.float32))),
    })
    root = make_dataset([], num_labels=1000, num_features=5000, multi_label=False)
    pq.write_table(table, root / "train" / "part-00000.parquet", row_group_size=10_000)
    file_bytes = table.nbytes
    del table
    pool = pa.default_memory_pool()
    base = pool.bytes_allocated()
    tracemalloc.start()
    peak_arrow, rows = 0, 0
    for batch in iter_batches(root, "train", 1000):
        rows += len(batch)
        peak_arrow = max(peak_arrow, pool.bytes_allocated() - base)
    _, peak_py = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert rows == n
    assert peak_arrow < file_bytes / 5, (peak_arrow, file_bytes)
    assert peak_py < file_bytes / 5, (peak_py, file_bytes)
