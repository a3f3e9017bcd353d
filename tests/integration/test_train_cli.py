"""`xlc train` end to end: Ray TorchTrainer, 2 CPU workers running DeepSpeed, MLflow, checkpoints, resume."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import last_json
from xlc.data import read_meta
from xlc.train import checkpoint as ckpt

pytestmark = pytest.mark.integration


def test_train_logs_to_mlflow_then_resumes(run_config, xlc_cli, synthetic_data, learned_p1, tmp_path):
    config = run_config()
    best = ("storage.keep_best=p@1", "storage.keep_best_order=min")  # the lowest P@1: most likely epoch 1's
    first = xlc_cli("train", str(config), *best, "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-4000:]
    result = last_json(first.stdout)
    metrics = result["metrics"]
    for name in ("p@1", "p@3", "p@5", "ndcg@5", "psp@5", "train_seconds", "samples_per_second",
                 "peak_memory_bytes", "head_parameters"):
        assert name in metrics, name
    assert metrics["p@1"] > learned_p1
    # single-label: top-5 holds the top-1 hit, so P@1 <= 5 P@5 <= 1; accuracy and nDCG@1 are P@1
    assert metrics["p@1"] <= 5 * metrics["p@5"] <= 1
    assert metrics["acc"] == pytest.approx(metrics["p@1"]) and metrics["ndcg@1"] == pytest.approx(metrics["p@1"])
    # one epoch: both workers together saw every training row (an equal split drops at most one)
    num_train = read_meta(synthetic_data).num_train
    assert metrics["samples_per_second"] * metrics["train_seconds"] == pytest.approx(num_train, abs=1)
    assert 2**26 < metrics["peak_memory_bytes"] < 2**36  # a worker's RSS in bytes: above 64 MiB (torch alone)
    assert metrics["head_parameters"] == 2 * 32 * (128 + 1)  # mhp: 2 codebooks of 32 (32² ≥ 1,000 labels)
    # worker output comes back to the driver (through the shared Ray too): `[name] epoch e/E step s loss ...`
    assert (first.stdout + first.stderr).count("[it] epoch 1/1 step 5 loss") == 1  # once: Ray forwards, no echo

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(result["run_id"])
    assert run.info.run_name == "it" and run.info.status == "FINISHED"
    assert run.data.params["head.name"] == "mhp" and run.data.params["train.batch_size"] == "64"
    assert {"loss", "p_at_1", "p_at_5"} <= set(run.data.metrics)
    assert run.data.tags["world_size"] == "2" and run.data.tags["resumed_from_step"] == "0"
    assert "config.yaml" in [a.path for a in client.list_artifacts(run.info.run_id)]
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/curves.png", "plots/frequency_buckets.png", "plots/label_frequency.png"} <= plots
    assert "model/state.json" in {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert any(k.startswith("recall@5/freq_") for k in metrics)  # head/tail breakdown
    assert list((tmp_path / "checkpoints" / "it").glob("checkpoint_*/manifest_0.json"))
    epoch_steps = int(client.get_metric_history(run.info.run_id, "p_at_1")[0].step)
    assert epoch_steps == -(-(num_train // 2) // 64)  # ceil(rows per worker / batch) optimiser steps

    # Same name, one more epoch: the run resumes from its epoch-1 checkpoint into the same MLflow run; Ray keeps
    # the newest checkpoint (storage.keep=1) and rank 0 a copy of the best beside it.
    second = xlc_cli("train", str(config), "train.epochs=2", "storage.keep=1", *best, "--json", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-4000:]
    resumed = last_json(second.stdout)
    assert resumed["run_id"] == result["run_id"]
    run = client.get_run(result["run_id"])
    assert int(run.data.tags["resumed_from_step"]) == epoch_steps
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "p_at_1"))
    assert steps == [epoch_steps, 2 * epoch_steps]  # epoch 2 continued the step count of epoch 1
    loss_steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
    assert loss_steps == list(range(5, 2 * epoch_steps + 1, 5))  # every log_every_steps, across the resume
    (newest,) = ckpt.checkpoint_dirs(tmp_path / "checkpoints" / "it")
    assert ckpt.read_state(newest)["step"] == 2 * epoch_steps
    (kept,) = ckpt.best_dirs(tmp_path / "checkpoints" / "it")
    worst = min(client.get_metric_history(run.info.run_id, "p_at_1"), key=lambda m: (m.value, m.step))
    assert ckpt.verify(kept) == [] and ckpt.read_state(kept)["step"] == worst.step


def test_user_errors_exit_2_with_one_line(run_config, xlc_main, synthetic_data, tmp_path):
    """Config, dataset and backbone/dataset mismatches: one line naming the problem, status 2, no traceback.
    In this process: each fails before Ray starts."""
    config = run_config()
    status, _, err = xlc_main("train", str(config), "train.epochs=zero")
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "train.epochs='zero': expected int" in lines[0]

    status, _, err = xlc_main("train", str(config), "head.num_hedas=2")
    assert status == 2 and "head.num_hedas: not an option of head 'mhp'" in err

    status, _, err = xlc_main("train", str(run_config(data=str(tmp_path / "missing"))))
    assert status == 2 and "missing" in err and "Traceback" not in err

    status, _, err = xlc_main("train", str(run_config(backbone={"name": "xmlcnn", "hidden": [16]})))
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "backbone.name='xmlcnn' needs a dataset with a text column (meta.json text: true)" in err
