"""`xlc train` end to end: Ray TorchTrainer, 2 CPU workers running DeepSpeed, MLflow, checkpoints, resume."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_train_logs_to_mlflow_then_resumes(run_config, xlc_cli, tmp_path):
    config = run_config()
    first = xlc_cli("train", str(config), "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-4000:]
    result = last_json(first.stdout)
    metrics = result["metrics"]
    for name in ("p@1", "p@3", "p@5", "ndcg@5", "psp@5", "train_seconds", "samples_per_second",
                 "peak_memory_bytes", "head_parameters"):
        assert name in metrics, name
    assert metrics["p@1"] > 0.05  # 1,918 labels: chance is 0.0005
    assert 1 >= metrics["p@1"] >= metrics["p@5"] > 0

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(result["run_id"])
    assert run.info.run_name == "it" and run.info.status == "FINISHED"
    assert run.data.params["head.name"] == "mhp" and run.data.params["train.batch_size"] == "128"
    assert {"loss", "p_at_1", "p_at_5"} <= set(run.data.metrics)
    assert run.data.tags["world_size"] == "2"
    assert "config.yaml" in [a.path for a in client.list_artifacts(run.info.run_id)]
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/curves.png", "plots/frequency_buckets.png", "plots/label_frequency.png"} <= plots
    assert "model/state.json" in {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert any(k.startswith("recall@5/freq_") for k in metrics)  # head/tail breakdown
    assert list((tmp_path / "checkpoints" / "it").glob("checkpoint_*/manifest_0.json"))

    # Same name, one more epoch: the run resumes from its epoch-1 checkpoint into the same MLflow run.
    second = xlc_cli("train", str(config), "train.epochs=2", "--json", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-4000:]
    resumed = last_json(second.stdout)
    assert resumed["run_id"] == result["run_id"]
    run = client.get_run(result["run_id"])
    assert int(run.data.tags["resumed_from_step"]) > 0
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "p_at_1")]
    assert len(steps) == 2 and steps[1] == 2 * steps[0]  # epoch 2 continued the step count of epoch 1


def test_config_error_exits_2_naming_the_field(run_config, xlc_cli, tmp_path):
    config = run_config()
    proc = xlc_cli("train", str(config), "train.epochs=zero", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.epochs='zero': expected int" in lines[0]
    assert "Traceback" not in proc.stderr

    proc = xlc_cli("train", str(config), "head.num_hedas=2", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "head.num_hedas: not an option of head 'mhp'" in proc.stderr


def test_bad_dataset_dir_exits_2(run_config, xlc_cli, tmp_path):
    config = run_config(data=str(tmp_path / "missing"))
    proc = xlc_cli("train", str(config), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "missing" in proc.stderr and "Traceback" not in proc.stderr
