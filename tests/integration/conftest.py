"""Integration fixtures: small datasets and one Ray head, each built once per session; a run config; `xlc` in
a subprocess connected to the shared Ray (`RAY_ADDRESS`), or on its own Ray where a test needs that."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ray_head

XLC = [sys.executable, "-m", "xlc.cli"]

# Synthetic data whose labels are predictable from the features (each label owns 8 prototype feature ids):
# 4,000 rows, 1,000 power-law labels, 3,182 train / 818 test. Always predicting the most frequent train label
# scores P@1 = 0.115 on the test split, a random one about 0.001; 91% of test rows have a label seen in training.
SYNTHETIC = dict(samples=4000, labels=1000, features=4096, seed=0)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    from data_tools.builders import synthetic

    return synthetic.build(str(tmp_path_factory.mktemp("data") / "synthetic"), **SYNTHETIC)


@pytest.fixture
def learned_p1() -> float:
    """A P@1 on `synthetic_data` that neither constant nor untrained predictions reach: the run learned the
    labels from the features (one epoch of mlp + mhp scores about 0.6)."""
    return 0.4


@pytest.fixture(scope="session")
def shared_ray():
    """One Ray head for every `xlc` subprocess of the session (a local Ray costs each run a start and a stop)."""
    with ray_head(num_cpus=4) as head:
        yield head


@pytest.fixture
def run_config(synthetic_data, tmp_path):
    """Write a run config (default: the synthetic set) into tmp_path; the MLflow store and checkpoints live there."""

    def make(**sections) -> Path:
        raw = {
            "name": "it",
            "data": str(synthetic_data),
            "backbone": {"name": "mlp", "hidden": [128], "dropout": 0.1},
            "head": {"name": "mhp", "num_heads": 2},
            "train": {"epochs": 1, "batch_size": 64, "lr": 0.003, "log_every_steps": 5},
            "workers": 2,
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "it"},
            "storage": {"path": str(tmp_path / "checkpoints")},
        }
        for key, value in sections.items():
            if isinstance(value, dict) and key != "head":  # a head section replaces the default head
                raw.setdefault(key, {}).update(value)
            else:
                raw[key] = value
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    return make


@pytest.fixture
def xlc_cli(request):
    """Run `xlc ARGS` in a subprocess: `xlc_cli("train", cfg, cwd=tmp_path)` -> CompletedProcess. It trains on the
    session's shared Ray unless `own_ray=True` (then `xlc` starts and stops a local Ray of its own)."""

    def run(*args: str, cwd: Path, timeout: int = 600, own_ray: bool = False) -> subprocess.CompletedProcess:
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
        env.pop("RAY_ADDRESS", None)
        if not own_ray:
            env.update(request.getfixturevalue("shared_ray")["client_env"])
        return subprocess.run([*XLC, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture
def xlc_main(capsys):
    """Run `xlc ARGS` in this process: -> (exit status, stdout, stderr). For commands that start no Ray: it
    spares a subprocess that imports torch, Ray and DeepSpeed again (seconds each on 2 loaded cores)."""
    from xlc.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            main(list(args))
            status = 0
        except SystemExit as e:
            status = e.code
        out, err = capsys.readouterr()
        return status, out, err

    return run
