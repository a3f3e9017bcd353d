"""A worker killed at a random step: Ray restarts the group from the last checkpoint and the run ends with the
weights of the uninterrupted run, bit for bit (CPU, ZeRO 0, `train.data_order: exact`: each rank's batches are
a function of (seed, epoch), the resumed epoch skips the batches already trained, and every rank's random
generators come back from the checkpoint)."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.helpers import last_json
from xlc.train import checkpoint as ckpt

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _train_workers(root: psutil.Process) -> list[psutil.Process]:
    found = []
    for proc in root.children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def _final_weights(run_dir) -> dict[str, torch.Tensor]:
    newest = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())[-1]
    return ckpt.module_state(newest)


def test_killed_worker_resumes_to_the_uninterrupted_weights(run_config, xlc_cli, tmp_path):
    """Both runs on a Ray of their own: the killed run's workers must be its descendants, and the kill must not
    touch the session's shared Ray. Dropout is on, so the generators' states matter too."""
    config = run_config(train={"epochs": 2, "checkpoint_every_steps": 8, "log_every_steps": 1},
                        storage={"max_failures": 2})
    reference = xlc_cli("train", str(config), "name=reference", "--json", cwd=tmp_path, own_ray=True)
    assert reference.returncode == 0, reference.stderr[-4000:]
    expected = last_json(reference.stdout)["metrics"]
    steps = 50  # 2 epochs x 25 batches of 64 per worker (3,182 training rows on 2 workers)
    kill_at = random.Random().randint(9, steps - 10)  # after the first checkpoint (step 8), well before the end

    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "xlc.cli", "train", str(config), "name=killed", "--json"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    err_lines: list[str] = []
    reached = threading.Event()
    pattern = re.compile(rf"\[killed\] epoch \d/2 step {kill_at} loss")

    def read_stderr() -> None:
        for line in proc.stderr:
            err_lines.append(line)
            if pattern.search(line):
                reached.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    assert reached.wait(timeout=600), f"step {kill_at} never logged:\n{''.join(err_lines)[-4000:]}"
    workers = _train_workers(psutil.Process(proc.pid))
    assert len(workers) == 2, "both training workers should be running"
    os.kill(workers[-1].pid, signal.SIGKILL)
    out = proc.stdout.read()
    proc.wait(timeout=900)
    reader.join(timeout=60)
    err = "".join(err_lines)
    assert proc.returncode == 0, err[-4000:]
    metrics = last_json(out)["metrics"]
    assert "restart" in err.lower() or "failure" in err.lower(), f"killed at step {kill_at}: no failure seen"
    run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(last_json(out)["run_id"])
    resumed_from = int(run.data.tags["resumed_from_step"])  # the restarted workers' starting step
    # a checkpoint's step (every 8, and each epoch's end, 25) before the last: the kill lands a few steps after
    # the logged one (the line reaches us through Ray's log forwarding), but before the run's end
    assert 8 <= resumed_from < steps and (resumed_from % 8 == 0 or resumed_from % 25 == 0), (kill_at, resumed_from)

    run_dir = tmp_path / "checkpoints" / "killed"
    for directory in sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir()):
        assert ckpt.verify(directory) == [], directory  # nothing lost or half-written
    reference_weights, weights = _final_weights(tmp_path / "checkpoints" / "reference"), _final_weights(run_dir)
    assert reference_weights.keys() == weights.keys()
    for name, tensor in reference_weights.items():
        assert torch.equal(tensor, weights[name]), f"killed at step {kill_at}: {name} differs"
    for key in ("p@1", "p@3", "p@5", "ndcg@5"):
        assert metrics[key] == expected[key], (kill_at, key, metrics[key], expected[key])
