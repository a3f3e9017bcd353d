"""`head.name: auto`: the head a run gets from its dataset when the config names none."""

from __future__ import annotations

import dataclasses

import pytest

from xlc.config import HeadConfig, RunConfig
from xlc.data import read_meta
from xlc.train.driver import SHARD_FROM_LABELS, default_head, prepare


@pytest.mark.parametrize(
    "multi_label, labels, workers, head",
    [
        (False, 1000, 2, "softmax"),
        (False, SHARD_FROM_LABELS, 1, "chunked_softmax"),
        (False, SHARD_FROM_LABELS, 2, "sharded_softmax"),
        (True, 1000, 2, "bce"),
        (True, SHARD_FROM_LABELS, 1, "bce"),
        (True, SHARD_FROM_LABELS, 2, "sharded_bce"),
    ],
)
def test_default_head_by_label_type_count_and_workers(icd10cm_small, multi_label, labels, workers, head):
    meta = dataclasses.replace(read_meta(icd10cm_small), multi_label=multi_label, num_labels=labels)
    assert default_head(meta, workers) == head


def test_prepare_resolves_auto_so_the_run_records_the_head_it_trained(icd10cm_small):
    cfg = RunConfig(name="t", data=str(icd10cm_small), workers=1)
    assert cfg.head == HeadConfig(name="auto")
    prepared, meta = prepare(cfg)
    assert not meta.multi_label and prepared.head == HeadConfig(name="softmax")
