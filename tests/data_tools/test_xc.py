"""XC text conversion: exact round trip, chunk boundaries, and every malformed input named by file and line."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_tools.xc import convert_xc
from xlc.data import iter_batches, label_counts, read_meta, split_files
from xlc.errors import DataError

TRAIN = """4 6 5
1,3 0:0.5 4:1.25
 2:1 5:0.75
4 3 1:2e-1
0,2,1 5:1
"""
TEST = """2 6 5
3 0:1
2
"""


def _rows(root, split):
    table = pa.concat_tables(pq.read_table(f) for f in split_files(root, split))
    return [(r["labels"], r["feat_idx"], r["feat_val"]) for r in table.to_pylist()]


def _write(tmp_path, train, test=TEST):
    (tmp_path / "trn.txt").write_text(train)
    (tmp_path / "tst.txt").write_text(test)
    return tmp_path / "trn.txt", tmp_path / "tst.txt"


@pytest.mark.parametrize("chunk_bytes", [1 << 20, 7])  # 7 bytes: a chunk boundary inside almost every line
def test_round_trip_exact(tmp_path, chunk_bytes):
    trn, tst = _write(tmp_path, TRAIN)
    out = convert_xc(trn, tst, tmp_path / "out", chunk_bytes=chunk_bytes, rows_per_file=3)
    meta = read_meta(out)
    assert (meta.num_train, meta.num_test, meta.num_features, meta.num_labels) == (4, 2, 6, 5)
    assert meta.multi_label and len(split_files(out, "train")) == 2
    assert _rows(out, "train") == [
        ([1, 3], [0, 4], [0.5, 1.25]),
        ([], [2, 5], [1.0, 0.75]),
        ([4], [3, 1], [1.0, pytest.approx(0.2)]),  # unsorted indices kept, bare `3` means 1
        ([0, 2, 1], [5], [1.0]),
    ]
    assert _rows(out, "test") == [([3], [0], [1.0]), ([2], [], [])]
    assert label_counts(out).tolist() == [1, 2, 1, 1, 1]
    batch = next(iter_batches(out, "train", 4))
    assert batch.targets.tolist() == [[1, 3, -1], [-1, -1, -1], [4, -1, -1], [0, 2, 1]]


def test_random_file_matches_python_parse(tmp_path):
    rng = np.random.default_rng(0)
    lines, expected = [], []
    for row in range(500):
        labels = rng.choice(100, rng.integers(0, 4), replace=False).tolist()
        idx = rng.choice(1000, rng.integers(0, 8), replace=False).tolist()
        val = np.round(rng.random(len(idx)), 4)
        if row >= 250:  # signed values: these chunks take the trimmed parse, the first ones the zero-padded one
            val *= rng.choice([-1, 1], len(idx))
        val = val.astype(np.float32).tolist()
        lines.append(",".join(map(str, labels)) + "".join(f" {i}:{v}" for i, v in zip(idx, val)))
        expected.append((labels, idx, val))
    trn, tst = _write(tmp_path, "500 1000 100\n" + "\n".join(lines))  # no final newline
    out = convert_xc(trn, tst, tmp_path / "out", chunk_bytes=4096)
    assert _rows(out, "train") == expected


def test_signed_and_exponent_values_parse_exactly(tmp_path):
    """Numbers starting with a sign take the trimmed parse; exponents and CRLF endings parse on either path."""
    train = "3 4 3\r\n0 1:-0.5 2:+2 3:1e-3\r\n1,2 0:2.5E2 3:.25\r\n2 1:007\r\n"
    trn, tst = _write(tmp_path, train, "1 4 3\n0 1:1e-3\n")
    out = convert_xc(trn, tst, tmp_path / "out")
    assert _rows(out, "train") == [
        ([0], [1, 2, 3], [-0.5, 2.0, pytest.approx(1e-3)]),
        ([1, 2], [0, 3], [250.0, 0.25]),
        ([2], [1], [7.0]),
    ]
    assert _rows(out, "test") == [([0], [1], [pytest.approx(1e-3)])]


@pytest.mark.parametrize("train, message", [
    ("", "trn.txt: empty file"),
    ("4 6\n1 0:1\n", r"trn.txt, line 1: bad header"),
    ("x y z\n", r"trn.txt, line 1: bad header"),
    ("2 6 5\n1 0:1\n7 1:1\n", r"trn.txt, line 3: label 7 out of range; expected an integer in \[0, 5\)"),
    ("2 6 5\n1 0:1\n1 9:1\n", r"trn.txt, line 3: feature index 9 out of range"),
    ("2 6 5\n1 0:1\n1 abc:1\n", r"trn.txt, line 3: 'abc' is not a number"),
    ("2 6 5\n1 0:1\n1 2:0.5x\n", r"trn.txt, line 3: '0.5x' is not a number"),
    ("2 6 5\n1 0:1\n1 2:", r"trn.txt, line 3: ':' not followed by a number \(truncated line\?\)"),
    ("2 6 5\n1,,2 0:1\n1 2:1\n", r"trn.txt, line 2: ',' not followed by a number"),
    ("3 6 5\n1 0:1\n1 2:1\n", r"trn.txt: header says 3 points but the file has 2 lines"),
    ("2 6 5\n1 0:1\n1:3 2:1\n", r"trn.txt, line 3: a ':value' without a feature index"),
    ("2 6 5\n1.5 0:1\n1 2:1\n", r"trn.txt, line 2: label '1.5' is not a plain non-negative integer"),
    ("2 6 5\n1 0:1\n1e1 2:1\n", r"trn.txt, line 3: label '1e1' is not a plain non-negative integer"),
    ("2 6 5\n1 0:1\n0,+1 2:1\n", r"trn.txt, line 3: label '\+1' is not a plain non-negative integer"),
    ("2 6 5\n1 0:1\n1 3:1_000\n", r"trn.txt, line 3: '1_000' is not a number"),  # Python's float() takes it
    ("2 6 5\n1 0:1\n1 2:nan\n", r"trn.txt, line 3: feature value 'nan' is not finite"),
    ("2 6 5\n1 0:1\n1 2:1 4:-inf\n", r"trn.txt, line 3: feature value '-inf' is not finite"),
    ("2 6 5\n1 0:1\n1 2:1e999\n", r"trn.txt, line 3: feature value '1e999' is not finite"),
    ("2 6 5\n1 0:1\n1 2:1e39\n", r"trn.txt, line 3: feature value '1e39' is not finite"),  # float32 overflow
    ("2 6 5\n1 0:1\n1 2:e5\n", r"trn.txt, line 3: 'e5' is not a number"),
    ("2 6 5\n1 0:1\n1 2:-x\n", r"trn.txt, line 3: '-x' is not a number"),
    ("2 6 5\n1 0:1 2\n:3\n", r"trn.txt, line 3: a ':value' without a feature index"),
    ("2 6 5\n1 0:1\r2:1\n1 2:1\n", r"trn.txt, line 2: a number after a carriage return"),
])
def test_malformed_input_names_file_and_line_and_leaves_nothing(tmp_path, train, message):
    trn, tst = _write(tmp_path, train)
    with pytest.raises(DataError, match=message):
        convert_xc(trn, tst, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trn.txt", "tst.txt"]


@pytest.mark.parametrize("chunk_bytes", [1 << 20, 9])
def test_repeated_labels_in_a_row_are_kept_once(tmp_path, chunk_bytes):
    """XC files in the wild repeat labels within a row; each row counts a label once, first occurrence first."""
    trn, tst = _write(tmp_path, "3 6 5\n1,1,3,1 0:1\n4,2,4 1:1\n2 2:1\n")
    out = convert_xc(trn, tst, tmp_path / "out", chunk_bytes=chunk_bytes)
    assert [r[0] for r in _rows(out, "train")] == [[1, 3], [4, 2], [2]]
    assert label_counts(out).tolist() == [0, 1, 2, 1, 1]


def test_a_repeated_label_alone_is_single_label(tmp_path):
    trn, tst = _write(tmp_path, "2 6 5\n1,1 0:1\n2 2:1\n")
    assert not read_meta(convert_xc(trn, tst, tmp_path / "out")).multi_label


def test_wrong_schema_file_is_named(tmp_path):
    """A Parquet file with the wrong column type in a converted dir is reported by the reader."""
    trn, tst = _write(tmp_path, TRAIN)
    out = convert_xc(trn, tst, tmp_path / "out")
    pq.write_table(pa.table({"labels": pa.array([["a"]])}), out / "test" / "part-00000.parquet")
    with pytest.raises(DataError, match=r"test/part-00000.parquet: column 'labels' has type list<\w+: string>"):
        list(iter_batches(out, "test", 2))
