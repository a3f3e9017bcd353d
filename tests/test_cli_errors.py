"""The `xlc` contract for bad input: one line on stderr and exit status 2, no traceback, nothing written."""

from __future__ import annotations

import json
import os
import socket
import sys
import time

import pytest
import yaml

from data_tools.xc import convert_xc
from xlc.cli import main


def xlc(capsys, *args: str) -> tuple[int, str]:
    """Run `xlc ARGS` in this process: (exit status, stderr)."""
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    return exit_.value.code, capsys.readouterr().err


def test_compare_file_with_a_yaml_syntax_error(tmp_path, capsys):
    path = tmp_path / "compare.yaml"
    path.write_text("name: c\nmethods: [{name: a}\n")
    assert xlc(capsys, "compare", str(path)) == (2, f"error: {path} line 3: not valid YAML "
                                                    "(expected ',' or ']', but got '<stream end>')\n")


def test_compare_with_no_methods_writes_nothing(tmp_path, capsys):
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump({"name": "c", "base": {"name": "t", "data": "absent"}, "methods": []}))
    assert xlc(capsys, "compare", str(path), "--out-dir", str(tmp_path / "out")) == (
        2, f"error: {path}: methods is empty; list at least one {{name, overrides}} or {{name, baseline}}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compare.yaml"]


def _xc_dataset(tmp_path, name: str, num_labels: int):
    for split in ("trn", "tst"):
        (tmp_path / f"{split}.txt").write_text(f"2 6 {num_labels}\n0 1:1\n1 2:1\n")
    return convert_xc(tmp_path / "trn.txt", tmp_path / "tst.txt", tmp_path / name)


def test_eval_on_a_dataset_of_another_shape(tmp_path, capsys):
    own, other = _xc_dataset(tmp_path, "own", 5), _xc_dataset(tmp_path, "other", 7)
    # all `xlc eval` reads before the weights: a manifest that verifies and the run config in state.json
    checkpoint = tmp_path / "checkpoint_000001"
    checkpoint.mkdir()
    (checkpoint / "manifest_0.json").write_text("{}")
    (checkpoint / "state.json").write_text(json.dumps({"config": {"name": "t", "data": str(own)}}))
    assert xlc(capsys, "eval", str(checkpoint), "--data", str(other)) == (
        2, f"error: --data {other}: 7 labels, 6 features, but run was trained on {own} with 5 labels, 6 features; "
           "evaluate on a dataset with the same labels and features\n")


def test_eval_against_a_tracking_uri_nothing_answers_at(monkeypatch, capsys):
    # MLflow's own retries off, so that without the probe this fails in seconds rather than minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
        tic = time.perf_counter()
        assert xlc(capsys, "eval", "0123abcd", "--uri", uri) == (
            2, f"error: --uri {uri}: nothing answers there (Connection refused); expected a running MLflow tracking "
               "server, or no --uri for the local store\n")
    assert time.perf_counter() - tic < 5


@pytest.mark.parametrize("port, message", [
    ("99999", "--port 99999: expected a port number in 1..65535"),
    ("taken", "--host 127.0.0.1 --port {port}: cannot listen there (Address already in use); pick a free port with --port"),
])
def test_ui_on_a_port_it_cannot_listen_on(tmp_path, monkeypatch, capsys, port, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "execvp", lambda *args: pytest.fail(f"the server was started: {args}"))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        if port == "taken":
            port = str(listener.getsockname()[1])
        assert xlc(capsys, "ui", "--port", port) == (2, f"error: {message.format(port=port)}\n")


def test_train_on_a_truncated_parquet_file_stops_before_ray_and_mlflow(tmp_path, monkeypatch, capsys):
    data = _xc_dataset(tmp_path, "own", 5)
    part = sorted((data / "train").glob("*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:-20])  # a copy cut short: the footer is gone
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"name": "cut", "data": str(data), "tracking": {"uri": f"sqlite:///{tmp_path / 'db'}"},
                                      "storage": {"path": str(tmp_path / "checkpoints")}}))
    code, err = xlc(capsys, "train", str(config))
    assert (code, err.count("\n")) == (2, 1), err
    assert err.startswith(f"error: {part}: not a readable Parquet file (") and "rebuild or copy the dataset" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["own", "run.yaml", "trn.txt", "tst.txt"]  # no store
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


@pytest.mark.parametrize("launcher", [[], ["--local"]])
def test_train_with_every_checkpoint_corrupt_stops_before_mlflow_and_keeps_them(tmp_path, capsys, launcher):
    data = _xc_dataset(tmp_path, "own", 5)
    run_dir = tmp_path / "checkpoints" / "broken"
    for index in (1, 2):
        checkpoint = run_dir / f"checkpoint_00000{index}"
        checkpoint.mkdir(parents=True)
        state = checkpoint / "state.json"
        state.write_text(json.dumps({"step": index}))
        (checkpoint / "manifest_0.json").write_text(json.dumps({"state.json": {"sha256": "0" * 64, "bytes": 11}}))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"name": "broken", "data": str(data), "tracking": {"uri": f"sqlite:///{tmp_path / 'db'}"},
                                      "storage": {"path": str(tmp_path / "checkpoints")}}))
    assert xlc(capsys, "train", str(config), *launcher) == (
        2, f"error: all 2 checkpoints under {run_dir} fail verification: {state}: checksum mismatch; "
           "rerun with --restart to start from step 0\n")
    assert not (tmp_path / "db").exists() and len(list(run_dir.iterdir())) == 2  # no MLflow run, nothing deleted
