"""`xlc train` with a label-sharded head (outside DeepSpeed's averaging) and with the FAISS label tree."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration


def test_sharded_softmax_trains_and_evaluates_offline(run_config, xlc_cli, tmp_path):
    config = run_config(head={"name": "sharded_softmax"}, eval={"collapse": True})
    proc = xlc_cli("train", str(config), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["metrics"]["p@1"] > 0.05
    assert result["metrics"]["head_parameters"] == 1918 * (128 + 1)  # both shards counted once

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    logged = client.get_run(result["run_id"]).data.metrics
    assert "nc/nc1" in logged and logged["nc/nc1"] > 0  # neural-collapse metrics at each evaluation

    # One process, world size 1: the 2 saved shards are reassembled and score exactly as in training.
    offline = xlc_cli("eval", result["run_id"], "--uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--json", cwd=tmp_path)
    assert offline.returncode == 0, offline.stderr[-4000:]
    metrics = json.loads(offline.stdout.strip().splitlines()[-1])["metrics"]
    for key in ("p@1", "p@5", "ndcg@5", "psp@5"):
        assert metrics[key] == pytest.approx(result["metrics"][key], abs=1e-9), key

    # ANN (FAISS HNSW over the reassembled classifier rows) against exact top-k on the whole test split.
    ann = xlc_cli("bench", "ann", result["run_id"], "--uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--json",
                  cwd=tmp_path)
    assert ann.returncode == 0, ann.stderr[-4000:]
    report = json.loads(ann.stdout.strip().splitlines()[-1])
    assert report["queries"] == 1000 and report["labels"] == 1918
    assert report["p@5 exact"] == pytest.approx(result["metrics"]["p@5"], abs=1e-9)
    assert 0.5 < report["recall@5"] <= 1.0 and report["p@5 ann"] <= report["p@5 exact"] + 0.02


def test_tree_head_trains_on_faiss_hierarchy(run_config, xlc_cli, tmp_path):
    config = run_config(head={"name": "tree", "branching": 16, "leaf_size": 32, "beam": 8},
                        train={"epochs": 2, "lr": 0.005})
    proc = xlc_cli("train", str(config), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["metrics"]["p@1"] > 0.05
