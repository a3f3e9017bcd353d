"""Integration fixtures: a small real dataset (a row subset of ICD-10-CM) and a run config for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from data_tools.builders import icd10cm

XLC = [sys.executable, "-m", "xlc.cli"]


def subset(src: Path, dst: Path, n_train: int, n_test: int) -> Path:
    """Copy `src` keeping its first n_train / n_test rows (the builder shuffled them); labels unchanged."""
    dst.mkdir(parents=True)
    meta = json.loads((src / "meta.json").read_text())
    for split, n in (("train", n_train), ("test", n_test)):
        (dst / split).mkdir()
        table = pq.read_table(sorted((src / split).glob("*.parquet"))[0]).slice(0, n)
        pq.write_table(table, dst / split / "part-00000.parquet")
        meta[f"num_{split}"] = table.num_rows
    for extra in src.iterdir():
        if extra.is_file() and extra.name != "meta.json":
            (dst / extra.name).write_bytes(extra.read_bytes())
    (dst / "meta.json").write_text(json.dumps(meta))
    return dst


@pytest.fixture(scope="session")
def icd10cm_dir(tmp_path_factory) -> Path:
    return icd10cm.build(str(tmp_path_factory.mktemp("data") / "icd10cm"))


@pytest.fixture(scope="session")
def small_icd10cm(icd10cm_dir, tmp_path_factory) -> Path:
    return subset(Path(icd10cm_dir), tmp_path_factory.mktemp("data") / "icd10cm-small", 6000, 1000)


@pytest.fixture
def run_config(small_icd10cm, tmp_path):
    """Write a run config for the small set into tmp_path; the MLflow store and checkpoints live there too."""

    def make(**sections) -> Path:
        raw = {
            "name": "it",
            "data": str(small_icd10cm),
            "backbone": {"name": "mlp", "hidden": [128], "dropout": 0.1},
            "head": {"name": "mhp", "num_heads": 2},
            "train": {"epochs": 1, "batch_size": 128, "lr": 0.003, "log_every_steps": 5},
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
def xlc_cli():
    """Run `xlc ARGS` in a subprocess: `xlc_cli("train", cfg, cwd=tmp_path)` -> CompletedProcess."""

    def run(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
        return subprocess.run([*XLC, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)

    return run
