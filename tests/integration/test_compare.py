"""`xlc compare` (one table, every run in one MLflow experiment) and `xlc ui` (MLflow on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration


def test_compare_trains_methods_and_baseline_into_one_experiment(run_config, xlc_cli, tmp_path):
    base = yaml.safe_load(run_config().read_text())
    spec = {
        "name": "cmp",
        "base": base,
        "methods": [
            {"name": "mhp", "overrides": {"head": {"name": "mhp", "num_heads": 2}}},
            {"name": "knn", "baseline": "knn", "options": {"k": 10}},
        ],
        "reuse": True,
    }
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = xlc_cli("compare", str(path), "--json", "--out-dir", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["experiment"] == "cmp"
    assert [r["method"] for r in summary["runs"]] == ["mhp", "knn"]
    for run in summary["runs"]:
        assert run["metrics"]["p@1"] > 0.05, run
    table = (tmp_path / "out" / "cmp" / "table.md").read_text()
    assert "| mhp |" in table and "| knn |" in table and "P@1" in table
    assert (tmp_path / "out" / "cmp" / "table.csv").read_text().count("\n") == 3

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cmp")
    names = {r.info.run_name for r in client.search_runs([experiment.experiment_id])}
    assert names == {"cmp-mhp", "cmp-knn", "cmp-summary"}
    summary_run = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_name == "cmp-summary"][0]
    artifacts = {a.path for a in client.list_artifacts(summary_run.info.run_id)}
    assert {"table.md", "table.csv", "metrics.png", "p1_vs_head_parameters.png"} <= artifacts

    # reuse: finished runs are read back from MLflow instead of trained again (no Ray start: fast)
    tic = time.perf_counter()
    again = xlc_cli("compare", str(path), "--json", "--out-dir", str(tmp_path / "out"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-4000:]
    rerun = json.loads(again.stdout.strip().splitlines()[-1])
    assert [r["run_id"] for r in rerun["runs"]] == [r["run_id"] for r in summary["runs"]]
    assert time.perf_counter() - tic < 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_on_loopback_then_stops(tmp_path):
    port = _free_port()
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    proc = subprocess.Popen([sys.executable, "-m", "xlc.cli", "ui", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline, body = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                time.sleep(1)
        assert body is not None, proc.stderr.read().decode()[-3000:] if proc.poll() is not None else "no answer"
        assert body.strip() == b"OK"
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        local_addresses = [line.split()[3] for line in listening.splitlines()]
        assert local_addresses and all(a.startswith("127.0.0.1:") for a in local_addresses), listening
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its gunicorn/uvicorn workers
        proc.wait(timeout=30)
