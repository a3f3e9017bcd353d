"""icd10cm: the parsed source counts, and a seeded subset built end to end through the CLI app (counts, label
order, split property, stored featuriser, shuffled rows). The whole 59k-row build differs only in its size."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from data_tools.builders import icd10cm
from data_tools.builders.packages import pip_package_file
from data_tools.cli import app
from data_tools.featurise import Featuriser
from tests.helpers import assert_close
from xlc.data import iter_batches, label_counts, label_names, read_meta, split_files
from xlc.errors import ConfigError

SUBSET = 6000


@pytest.fixture(scope="module")
def icd(tmp_path_factory):
    out = tmp_path_factory.mktemp("icd") / "icd10cm"
    result = CliRunner().invoke(app, ["build", "icd10cm", str(out), "--seed", "0", "--max-samples", str(SUBSET)])
    assert result.exit_code == 0, result.output
    return out


def test_source_has_every_description_and_category():
    samples = icd10cm.parse_tabular(pip_package_file(icd10cm.PACKAGE, "simple_icd_10_cm", icd10cm.TABULAR_GLOB))
    assert len(samples) == 59450 and len({code[:3] for _, code in samples}) == 1918
    assert samples[0] == ("Cholera", "A00") and all(text and code for text, code in samples)


def test_icd10cm_subset_shape_and_labels(icd):
    meta = read_meta(icd)
    assert meta.num_train + meta.num_test == SUBSET and meta.options["max_samples"] == SUBSET
    assert 1000 < meta.num_labels < 1918  # a random 10%: most categories, not all
    assert meta.text and not meta.multi_label and meta.num_features > 2000
    names = label_names(icd)
    assert names == sorted(names) and all(len(n) == 3 and n[0].isalpha() for n in names)
    counts = label_counts(icd)
    assert counts.sum() == meta.num_train and counts.min() >= 1  # every category has a train row
    test_labels = np.concatenate([b.targets.numpy() for b in iter_batches(icd, "test", 4096)])
    assert len(test_labels) == meta.num_test and (counts[test_labels] > 0).all()
    assert 0.15 < meta.num_test / SUBSET < 0.22  # below 0.2: categories seen once in the subset stay in train
    assert not list(icd.parent.glob(".icd10cm.tmp-*"))  # temp dir renamed away


def test_subset_is_seeded(icd, tmp_path):
    again = icd10cm.build(str(tmp_path / "again"), max_samples=SUBSET, seed=0)
    other = icd10cm.build(str(tmp_path / "other"), max_samples=SUBSET, seed=1)
    texts = lambda root: sorted(pq.read_table(split_files(root, "train")[0], columns=["text"]).column("text").to_pylist())
    assert texts(again) == texts(icd) and texts(other) != texts(icd)
    with pytest.raises(ConfigError, match="--max-samples=-1: expected 0 \\(all\\) or a positive count"):
        icd10cm.build(str(tmp_path / "bad"), max_samples=-1)


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
