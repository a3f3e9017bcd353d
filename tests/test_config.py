"""Run config: YAML + overrides into typed sections; every bad field named, all at once."""

from __future__ import annotations

import pytest
import yaml

from xlc.config import load
from xlc.errors import ConfigError

BASE = {
    "name": "t",
    "data": "data/x",
    "backbone": {"name": "mlp", "hidden": [64], "dropout": 0.1},
    "head": {"name": "softmax"},
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.01},
    "workers": 2,
}


def write(tmp_path, raw) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_loads_typed_sections_and_overrides(tmp_path):
    cfg = load(write(tmp_path, BASE), ["train.epochs=3", "head.name=mhp", "head.num_heads=3", "eval.k=[1,5]"])
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.01 and isinstance(cfg.train.lr, float)
    assert cfg.head.name == "mhp" and cfg.head.options == {"num_heads": 3}
    assert cfg.eval.k == [1, 5] and cfg.backbone.hidden == [64]
    assert cfg.to_dict()["head"] == {"name": "mhp", "num_heads": 3}


def test_int_accepted_where_float_expected(tmp_path):
    assert load(write(tmp_path, BASE), ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize(
    "override, fragment",
    [
        (["train.epoks=3"], "train.epoks: unknown key; allowed: epochs"),
        (["train.epochs=three"], "train.epochs='three': expected int"),
        (["train.batch_size=0"], "train.batch_size=0: must be >= 1"),
        (["workers=true"], "workers=True: expected int"),
        (["head.name=mhx"], "head.name='mhx': expected auto or one of"),
        (["head={num_heads: 2}"], "head.name=auto (the default) picks the head from the dataset and takes no options"),
        (["head.num_hedas=2", "head.name=mhp"], "head.num_hedas: not an option of head 'mhp'"),
        (["backbone.dropout=1.5"], "backbone.dropout=1.5: must be in [0, 1)"),
        (["eval.k=[]"], "eval.k=[]: must be a non-empty list"),
        (["nonsense=1"], "nonsense: unknown key; allowed: name, data"),
        (["name=../escape"], "name='../escape': use letters, digits"),
        (["storage.keep_best=p@2"],
         "storage.keep_best='p@2': expected a metric the evaluation reports at eval.k=[1, 3, 5]: p@1, p@3, p@5, "
         "ndcg@1, ndcg@3, ndcg@5, psp@1, psp@3, psp@5, acc"),
        (["storage.keep_best=acc", "storage.path=s3://bucket/runs"],
         "storage.keep_best='acc': needs storage.path on a filesystem (local or shared), not 's3://"),
        (["storage.keep_best_order=best"], "storage.keep_best_order='best': expected one of max, min"),
    ],
)
def test_bad_fields_are_named(tmp_path, override, fragment):
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, BASE), override)
    assert fragment in str(err.value)


def test_every_error_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, BASE), ["train.epochs=0", "workers=0", "train.lr=-1"])
    message = str(err.value)
    for key in ("train.epochs=0", "workers=0", "train.lr=-1"):
        assert key in message


def test_missing_required_and_bad_yaml(tmp_path):
    raw = dict(BASE)
    del raw["data"]
    with pytest.raises(ConfigError, match="data: required key is missing"):
        load(write(tmp_path, raw))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+: not valid YAML"):
        load(str(bad))
    with pytest.raises(ConfigError, match="config file not found"):
        load(str(tmp_path / "absent.yaml"))
    with pytest.raises(ConfigError, match="expected key=value"):
        load(write(tmp_path, BASE), ["train.epochs"])


def test_unparsable_override_value_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"override 'train.epochs=\[1': the value '\[1' is not valid YAML \(expected"):
        load(write(tmp_path, BASE), ["train.epochs=[1"])


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), r"cannot read the config file \(Is a directory\)"),
    (lambda p: p.write_bytes(b"\x7fELF\x02\x01\x01\x00\xd0\xff"), r"config file is not text \(not UTF-8\); expected YAML"),
    (lambda p: p.write_bytes(b"name: \x00\x01"), r"not valid YAML \(unacceptable character #x0000"),
], ids=["directory", "binary", "control-character"])
def test_a_config_that_is_no_yaml_text_is_named_in_one_line(tmp_path, make, message):
    make(tmp_path / "run.yaml")
    with pytest.raises(ConfigError, match=rf"run.yaml: {message}") as err:
        load(tmp_path / "run.yaml")
    assert "\n" not in str(err.value)


def test_the_head_defaults_to_auto(tmp_path):
    raw = {k: v for k, v in BASE.items() if k != "head"}
    assert load(write(tmp_path, raw)).head.name == "auto"
