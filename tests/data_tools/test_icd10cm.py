"""icd10cm build end to end through the CLI app: counts, label order, split property, stored featuriser."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from data_tools.cli import app
from data_tools.featurise import Featuriser
from tests.conftest import assert_close
from xlc.data import iter_batches, label_counts, label_names, read_meta, split_files


@pytest.fixture(scope="module")
def icd(tmp_path_factory):
    out = tmp_path_factory.mktemp("icd") / "icd10cm"
    result = CliRunner().invoke(app, ["build", "icd10cm", str(out), "--seed", "0"])
    assert result.exit_code == 0, result.output
    return out


def test_icd10cm_shape_and_labels(icd):
    meta = read_meta(icd)
    assert (meta.num_train + meta.num_test, meta.num_labels) == (59450, 1918)
    assert meta.text and not meta.multi_label and meta.num_features > 10_000
    names = label_names(icd)
    assert names == sorted(names) and names[0] == "A00" and all(len(n) == 3 for n in names)
    counts = label_counts(icd)
    assert counts.sum() == meta.num_train and counts.min() >= 1  # every category has a train row
    test_labels = np.concatenate([b.targets.numpy() for b in iter_batches(icd, "test", 4096)])
    assert len(test_labels) == meta.num_test and (counts[test_labels] > 0).all()
    assert 0.18 < meta.num_test / (meta.num_train + meta.num_test) < 0.22
    assert not list(icd.parent.glob(".icd10cm.tmp-*"))  # temp dir renamed away


def test_icd10cm_features_match_stored_featuriser(icd):
    batch = next(iter_batches(icd, "test", 64))
    X = Featuriser.load(icd).transform(batch.text)
    assert (np.diff(X.indptr) == np.diff(np.append(batch.feat_offsets.numpy(), len(batch.feat_idx)))).all()
    assert (X.indices == batch.feat_idx.numpy()).all()
    assert_close(X.data, batch.feat_val.numpy())
    norms = np.sqrt(np.bincount(np.repeat(np.arange(64), np.diff(X.indptr)), X.data.astype(np.float64) ** 2, 64))
    assert_close(norms[np.diff(X.indptr) > 0], np.ones(int((np.diff(X.indptr) > 0).sum())), atol=1e-5)


def test_icd10cm_rows_are_shuffled(icd):
    labels = pq.read_table(split_files(icd, "train")[0], columns=["labels"]).column("labels").to_pylist()[:200]
    assert len({tuple(x) for x in labels}) > 100  # sources list samples grouped by code; the files must not
