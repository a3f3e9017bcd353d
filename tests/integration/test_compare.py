"""`xlc compare` (one table, every run in one MLflow experiment) and `xlc ui` (MLflow on 127.0.0.1)."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.helpers import last_json, xlc_ui

pytestmark = pytest.mark.integration


def test_compare_trains_heads_backbones_and_knn_into_one_experiment(run_config, xlc_cli, icd10cm_small, tmp_path):
    """On real text (ICD-10-CM subset, 1,467 labels, chance P@1 below 0.001): the FAISS label-tree head (a PECOS
    hierarchy built on the driver, shipped to the workers) over the sparse MLP, softmax over XML-CNN reading the
    text, and the kNN baseline. Every method must learn; all land in one experiment and one table."""
    base = yaml.safe_load(run_config(data=str(icd10cm_small), train={"epochs": 2, "batch_size": 128}).read_text())
    spec = {
        "name": "cmp",
        "base": base,
        "methods": [
            {"name": "tree", "overrides": {"head": {"name": "tree", "branching": 16, "leaf_size": 32, "beam": 8},
                                           "train.lr": 0.005}},
            {"name": "xmlcnn", "overrides": {"head": {"name": "softmax"}, "backbone.name": "xmlcnn",
                                             "backbone.options": {"buckets": 65536, "embed_dim": 64, "filters": 64}}},
            {"name": "knn", "baseline": "knn", "options": {"k": 10}},
        ],
        "reuse": True,
    }
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = xlc_cli("compare", str(path), "--json", "--out-dir", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = last_json(proc.stdout)
    assert summary["experiment"] == "cmp"
    assert [r["method"] for r in summary["runs"]] == ["tree", "xmlcnn", "knn"]
    for run in summary["runs"]:
        assert run["metrics"]["p@1"] > 0.05, run
    table = (tmp_path / "out" / "cmp" / "table.md").read_text()
    assert "| tree |" in table and "| xmlcnn |" in table and "| knn |" in table and "P@1" in table
    assert (tmp_path / "out" / "cmp" / "table.csv").read_text().count("\n") == 4  # header + 3 methods

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cmp")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["cmp", "cmp-knn", "cmp-tree", "cmp-xmlcnn"]
    parent = runs["cmp"].info.run_id  # the compare's own run; every method run is nested under it
    assert summary["parent_run_id"] == parent
    assert {runs[f"cmp-{m}"].data.tags["mlflow.parentRunId"] for m in ("knn", "tree", "xmlcnn")} == {parent}
    assert runs["cmp-tree"].inputs.dataset_inputs[0].dataset.name == runs["cmp-knn"].inputs.dataset_inputs[0].dataset.name
    assert runs["cmp-tree"].data.params["head.name"] == "tree" and runs["cmp-tree"].data.params["train.epochs"] == "2"
    assert runs["cmp-xmlcnn"].data.params["backbone.name"] == "xmlcnn"
    for method in ("knn", "tree", "xmlcnn"):  # MLflow's system metrics, from the worker of rank 0 or the driver
        assert "system/system_memory_usage_megabytes" in runs[f"cmp-{method}"].data.metrics, method
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert {"table.md", "table.csv", "metrics.png", "p1_vs_head_parameters.png"} <= artifacts

    # reuse: finished runs are read back from MLflow instead of trained again (no new run, no worker started)
    again = xlc_cli("compare", str(path), "--json", "--out-dir", str(tmp_path / "out"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-4000:]
    rerun = last_json(again.stdout)
    assert [r["run_id"] for r in rerun["runs"]] == [r["run_id"] for r in summary["runs"]]
    assert [r["metrics"]["p@1"] for r in rerun["runs"]] == [r["metrics"]["p@1"] for r in summary["runs"]]
    assert len(client.search_runs([experiment.experiment_id])) == 4  # the compare's run is reopened by name too
    assert "RayTrainWorker" not in again.stdout + again.stderr


def test_ui_serves_on_loopback_then_stops(tmp_path):
    with xlc_ui(tmp_path) as ui:
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{ui['port']}"], capture_output=True, text=True).stdout
        local_addresses = [line.split()[3] for line in listening.splitlines()]
        assert local_addresses and all(a.startswith("127.0.0.1:") for a in local_addresses), listening
