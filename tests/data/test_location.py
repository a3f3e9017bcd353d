"""`xlc.data.location`: a dataset directory behind an S3 URI (moto's S3 server on 127.0.0.1) reads as its local
copy does; a URI no pyarrow filesystem opens and a dataset that is not there are one-line errors naming them."""

from __future__ import annotations

import numpy as np
import pytest

from xlc.data import check_files, iter_tables, label_counts, label_names, open_location, read_meta, split_files
from xlc.errors import ConfigError, DataError


@pytest.fixture
def dataset(make_dataset, random_rows):
    rows = random_rows(40, num_labels=10, num_features=20, max_labels=2)
    return make_dataset(rows, rows[:7], num_labels=10, num_features=20, multi_label=True, rows_per_file=15)


def test_a_dataset_on_s3_reads_as_its_local_copy(s3, dataset):
    uri = s3.upload(dataset, "sets/ds")
    assert read_meta(uri) == read_meta(dataset)
    files = split_files(uri, "train")
    assert [str(f) for f in files] == [f"s3://xlc/sets/ds/train/part-0000{i}.parquet" for i in range(3)]
    assert [f.name for f in files] == [f.name for f in split_files(dataset, "train")]
    check_files(uri)
    assert np.array_equal(label_counts(uri), label_counts(dataset)) and label_names(uri) == label_names(dataset)
    for split in ("train", "test"):
        remote = [t.to_pylist() for t in iter_tables(uri, split, 8, shuffle_seed=3)]
        assert remote == [t.to_pylist() for t in iter_tables(dataset, split, 8, shuffle_seed=3)]


def test_the_aws_endpoint_environment_variable_is_honoured(s3, dataset, monkeypatch):
    s3.upload(dataset, "sets/env")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{s3.port}")
    assert read_meta("s3://xlc/sets/env") == read_meta(dataset)


def test_bad_uris_and_missing_datasets_are_one_line_errors_naming_them(s3, dataset):
    expected = "expected a local path or a URI that pyarrow.fs opens (s3://bucket/prefix, gs://bucket/prefix, " \
               "file:///path); pyarrow says:"
    with pytest.raises(ConfigError) as e:
        open_location("foo://bucket/x", "data")
    assert str(e.value) == f"data='foo://bucket/x': {expected} Unrecognized filesystem type in URI: foo://bucket/x"
    bad = s3.uri("sets/ds") + "&timeout=5"
    with pytest.raises(ConfigError) as e:
        open_location(bad, "storage.path")
    assert str(e.value) == f"storage.path={bad!r}: {expected} Unexpected query parameter in S3 URI: 'timeout'"

    with pytest.raises(DataError) as e:
        read_meta(s3.uri("sets/none"))
    assert str(e.value) == ("s3://xlc/sets/none/meta.json: not found; a dataset directory needs meta.json "
                            "(build one with `xlc data build`)")
    s3.upload(dataset, "sets/no-test")
    open_location(s3.uri("sets/no-test/test")).delete()
    with pytest.raises(DataError, match=r"^s3://xlc/sets/no-test/test: no \*\.parquet files; a dataset directory "
                                        r"needs train/test splits$"):
        check_files(s3.uri("sets/no-test"))
    with pytest.raises(DataError, match=r"^s3://none/x/meta.json: not found; "):  # no such bucket
        read_meta(s3.uri("x").replace("s3://xlc/", "s3://none/"))
