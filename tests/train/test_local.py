"""`xlc train CONFIG --local`: the worker loop without Ray, end to end on a tiny synthetic set (50 labels).

Each run is a subprocess of the CLI. `import ray` (and, in one test, mlflow and faiss) is made to fail in
it, so the local path is shown never to need them. Two gloo ranks under `torch.distributed.run`, each on
half of every global batch, must end with the weights of one rank on the whole batch.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from data_tools.builders import synthetic
from tests.helpers import Payload, assert_close
from xlc.data import read_meta
from xlc.heads import build_head
from xlc.train import checkpoint as ckpt

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return synthetic.build(str(tmp_path_factory.mktemp("data") / "syn"), samples=2000, labels=50, features=300)


def write_config(tmp_path: Path, dataset: Path, name: str, **train) -> Path:
    raw = {
        "name": name, "data": str(dataset),
        "backbone": {"name": "mlp", "hidden": [64], "dropout": 0.0, "options": {"sparse_grad": True}},
        "head": {"name": "softmax"},
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.01, "log_every_steps": 5, **train},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "local"},
        "storage": {"path": str(tmp_path / "checkpoints")},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def xlc_local(cwd: Path, *args: str, blocked=("ray",)) -> dict:
    """`xlc train ARGS --local --json` in a process where importing `blocked` modules fails; its JSON line."""
    code = f"import sys; sys.modules.update(dict.fromkeys({list(blocked)!r})); from xlc.cli import main; main()"
    proc = subprocess.run([sys.executable, "-c", code, "train", *args, "--local", "--json"], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "stdout": proc.stdout, "stderr": proc.stderr}


def test_local_trains_logs_checkpoints_and_resumes(tmp_path, dataset):
    config = write_config(tmp_path, dataset, "one", schedule="cosine", warmup_steps=3)
    steps = math.ceil(read_meta(dataset).num_train / 64)
    # keep the checkpoint of the lowest P@1: most likely the first epoch's, whose copy then outlives it
    best = ("storage.keep_best=p@1", "storage.keep_best_order=min")
    first = xlc_local(tmp_path, str(config), *best)
    assert first["metrics"]["p@1"] > 0.5  # 50 labels: an untrained model scores about 0.02
    (saved,) = ckpt.checkpoint_dirs(tmp_path / "checkpoints" / "one")
    assert saved.name == "checkpoint_000001" and ckpt.verify(saved) == []
    assert ckpt.read_state(saved)["step"] == steps

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(first["run_id"])
    assert run.info.status == "FINISHED"
    assert {"loss", "p_at_1", "system/cpu_utilization_percentage"} <= set(run.data.metrics)  # system: MLflow's
    assert run.data.params["train.schedule"] == "cosine"

    # Same name, one more epoch: resumes at the saved step, in the same MLflow run; keep=1 prunes the first,
    # keep_best keeps a copy of the best one (by P@1, as MLflow logged it) beside the newest.
    second = xlc_local(tmp_path, str(config), "train.epochs=2", "storage.keep=1", *best)
    assert second["run_id"] == first["run_id"]
    assert client.get_run(first["run_id"]).data.tags["resumed_from_step"] == str(steps)
    history = client.get_metric_history(first["run_id"], "p_at_1")
    assert [m.step for m in history] == [steps, 2 * steps]
    (saved,) = ckpt.checkpoint_dirs(tmp_path / "checkpoints" / "one")
    assert saved.name == "checkpoint_000002" and ckpt.read_state(saved)["step"] == 2 * steps
    (kept,) = ckpt.best_dirs(tmp_path / "checkpoints" / "one")  # beside the newest: a copy of the best
    worst = min(history, key=lambda m: (m.value, m.step))  # the first to reach the lowest P@1
    assert ckpt.verify(kept) == [] and ckpt.read_state(kept)["step"] == worst.step
    assert ckpt.read_state(kept)["metrics"]["p@1"] == pytest.approx(worst.value)
    engine = torch.load(saved / ckpt.ENGINE_MODULE_FILE, map_location="cpu", weights_only=False)
    assert engine["global_steps"] == engine["lr_scheduler"]["last_epoch"] == 2 * steps  # the schedule continued


def test_local_trains_without_mlflow_ray_or_faiss(tmp_path, dataset):
    config = write_config(tmp_path, dataset, "bare", max_steps=5)
    result = xlc_local(tmp_path, str(config), blocked=("ray", "mlflow", "faiss"))
    assert result["run_id"] is None and "tracking is off" in result["stderr"]
    assert json.loads(result["stdout"])["metrics"] == result["metrics"]  # --json: stdout is the JSON object alone
    assert "[bare] epoch 1/1 step 5 loss " in result["stderr"]  # the step lines (log_every_steps=5) on stderr
    assert set(result["metrics"]) >= {"p@1", "p@5", "ndcg@5", "psp@5", "train_seconds", "head_parameters"}
    (saved,) = (tmp_path / "checkpoints" / "bare").iterdir()
    assert ckpt.verify(saved) == [] and ckpt.read_state(saved)["step"] == 5
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow  # ~60 s: two torch.distributed.run launches with DeepSpeed
def test_two_gloo_ranks_match_one_rank_on_the_same_global_batch(tmp_path, dataset):
    """Batch i of the shuffled split goes to rank i % world, so 2 ranks x 32 rows see, step by step, the rows
    of 1 rank x 64; the sharded head's loss is the global-batch mean and DeepSpeed averages the backbone."""
    common = {"max_steps": 12, "schedule": "linear", "warmup_steps": 2}
    one = write_config(tmp_path, dataset, "w1", **common)
    two = write_config(tmp_path, dataset, "w2", batch_size=32, **common)
    overrides = ["head.name=sharded_softmax"]
    single = xlc_local(tmp_path, str(one), *overrides)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "xlc.cli",
                           "--", "train", str(two), *overrides, "--local", "--json"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    double = json.loads(proc.stdout.strip().splitlines()[-1])  # rank 0 alone prints
    assert double["metrics"]["p@1"] > 0.3 and single["metrics"]["p@1"] > 0.3
    assert abs(double["metrics"]["p@1"] - single["metrics"]["p@1"]) < 0.02

    saved = {name: next((tmp_path / "checkpoints" / name).iterdir()) for name in ("w1", "w2")}
    assert ckpt.read_state(saved["w2"])["world_size"] == 2
    for key, weight in ckpt.module_state(saved["w1"]).items():
        assert_close(ckpt.module_state(saved["w2"])[key], weight, atol=1e-4, rtol=1e-3, msg=key)
    heads = {}
    for name, directory in saved.items():
        heads[name] = build_head("sharded_softmax", 50, 64)  # one process: every label, from all shards
        ckpt.load_head_shard(directory, heads[name])
    assert_close(heads["w2"].weight, heads["w1"].weight, atol=1e-4, rtol=1e-3)


@pytest.mark.slow  # ~40 s: a ZeRO-3 bf16 run, then `xlc eval` in another process
def test_zero3_bf16_run_evaluates_offline_from_its_partitions(tmp_path, dataset):
    """ZeRO-3 with persistence threshold 0 partitions even this model's tensors: the replicated head trains in
    the engine's forward, its parameter count and NC3 (which reads its classifier rows) see whole tensors,
    and `xlc eval` rebuilds fp32 weights from the partitions and scores like the bf16 run."""
    ds_json = tmp_path / "zero3.json"
    ds_json.write_text(json.dumps({"bf16": {"enabled": True},
                                   "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}))
    config = write_config(tmp_path, dataset, "z3")
    result = xlc_local(tmp_path, str(config), f"deepspeed={ds_json}", "eval.collapse=true")
    trained = result["metrics"]
    logged = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(result["run_id"]).data.metrics
    assert trained["head_parameters"] == 50 * 64 + 50 and "nc/nc3" in logged
    (saved,) = (tmp_path / "checkpoints" / "z3").iterdir()
    proc = subprocess.run([sys.executable, "-m", "xlc.cli", "eval", str(saved), "--json"], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    offline = json.loads(proc.stdout.strip().splitlines()[-1])["metrics"]
    # 50 separable labels (chance 0.02): the run reaches 1.0, and fp32 weights from the partitions score the same
    assert trained["p@1"] >= 0.95 and abs(offline["p@1"] - trained["p@1"]) <= 0.01


def _runs_named(tmp_path: Path, name: str) -> list:
    """The MLflow runs of `write_config`'s store named `name`, newest first."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name("local").experiment_id],
                              filter_string=f"attributes.run_name = '{name}'", order_by=["attributes.start_time DESC"])


@pytest.mark.slow  # 10-50 s each on the shared 2-core machine: a --local run until its first checkpoint
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_ends_killed_and_says_where_it_resumes(tmp_path, dataset, signum):
    config = write_config(tmp_path, dataset, "stopped", epochs=1000, checkpoint_every_steps=4)
    # A shell starts background jobs with SIGINT ignored, and Python keeps an inherited SIG_IGN: as at a terminal here
    proc = subprocess.Popen([sys.executable, "-m", "xlc.cli", "train", str(config), "--local"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run_dir = tmp_path / "checkpoints" / "stopped"
    deadline = time.monotonic() + 300
    while not ckpt.checkpoint_dirs(run_dir) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    step = ckpt.read_state(ckpt.newest_valid(run_dir))["step"]
    assert proc.returncode == 128 + signum, err[-3000:]
    assert err.splitlines()[-1] == f"interrupted; rerun the same command to resume from step {step}", err[-3000:]
    (run,) = _runs_named(tmp_path, "stopped")
    assert run.info.status == "KILLED"


@pytest.mark.slow  # 25-130 s on the shared 2-core machine: three --local runs
def test_a_checkpoint_holding_pickled_code_is_refused_and_restart_starts_over(tmp_path, dataset):
    config = write_config(tmp_path, dataset, "doctored", max_steps=3)
    first = xlc_local(tmp_path, str(config))
    (saved,) = ckpt.checkpoint_dirs(tmp_path / "checkpoints" / "doctored")
    module_file, marker = saved / ckpt.ENGINE_MODULE_FILE, tmp_path / "ran"
    doctored = torch.load(module_file, weights_only=False)  # the test's own file
    doctored["client_state"] = Payload(str(marker))
    torch.save(doctored, module_file)
    ckpt.write_manifest(saved, 0, [saved / name for name in json.loads((saved / "manifest_0.json").read_text())])
    assert ckpt.verify(saved) == []  # the manifest matches: only the loader stands between the file and its code

    proc = subprocess.run([sys.executable, "-m", "xlc.cli", "train", str(config), "--local"], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1].startswith(f"error: {module_file}: refusing to load it: it holds pickled "
                                                   "objects other than weights (Unsupported global: GLOBAL io.open")
    assert not marker.exists()
    assert _runs_named(tmp_path, "doctored")[0].info.status == "FAILED"

    again = xlc_local(tmp_path, str(config), "--restart")  # deletes the run's checkpoints, opens a new MLflow run
    (saved,) = ckpt.checkpoint_dirs(tmp_path / "checkpoints" / "doctored")
    assert ckpt.read_state(saved)["step"] == 3 and again["run_id"] != first["run_id"]
    assert [r.info.status for r in _runs_named(tmp_path, "doctored")] == ["FINISHED", "FAILED"]
