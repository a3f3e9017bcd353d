"""`xlc.train.model`: the dry build that checks a run's backbone and head before Ray or MLflow start."""

from __future__ import annotations

import pytest

from xlc import config as xconfig
from xlc.data.schema import DatasetMeta
from xlc.errors import ConfigError
from xlc.heads import ShardedHead
from xlc.train.model import build_model, check_model

META = DatasetMeta(name="t", num_labels=10**6, multi_label=False, num_features=10**5)


def run(**sections) -> xconfig.RunConfig:
    return xconfig.from_dict({"name": "t", "data": "unused", **sections})


def test_option_values_of_backbone_and_head_are_reported_together():
    cfg = run(backbone={"name": "mlp", "hidden": []}, head={"name": "mhp", "rank": 0})
    with pytest.raises(ConfigError) as err:
        check_model(cfg, META)
    lines = str(err.value).splitlines()
    assert len(lines) == 1 and "hidden" in lines[0]  # no feature dim, so the head cannot be dry-built


def test_head_option_value_is_named():
    with pytest.raises(ConfigError, match=r"^head\.rank=0: expected"):
        check_model(run(head={"name": "mhp", "rank": 0}), META)
    with pytest.raises(ConfigError, match=r"^head\.num_heads='two'"):
        check_model(run(head={"name": "mhp", "num_heads": "two"}), META)


def test_a_million_label_sharded_head_dry_builds_without_memory():
    check_model(run(head={"name": "sharded_softmax"}, backbone={"name": "mlp", "hidden": [256]}), META)


def test_sharded_heads_stay_outside_the_model():
    small = DatasetMeta(name="t", num_labels=50, multi_label=False, num_features=30)
    model, head = build_model(run(head={"name": "sharded_softmax"}, backbone={"hidden": [8]}), small)
    assert isinstance(head, ShardedHead) and model.head is None
    model, head = build_model(run(head={"name": "mhp"}, backbone={"hidden": [8]}), small)
    assert model.head is head


def test_heads_with_a_multi_label_option_follow_the_dataset_unless_told():
    single = DatasetMeta(name="t", num_labels=50, multi_label=False, num_features=30)
    _, head = build_model(run(head={"name": "mhc"}, backbone={"hidden": [8]}), single)
    assert head.multi_label is False
    _, head = build_model(run(head={"name": "mhc", "multi_label": True}, backbone={"hidden": [8]}), single)
    assert head.multi_label is True
