"""`launch.submit`: the Ray job it builds (entrypoint, runtime env, uploaded files), its errors, and a real
`xlc train` submitted to a local Ray head on 127.0.0.1 whose MLflow run is then read back."""

from __future__ import annotations

import io
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from launch.submit import (ENTRYPOINT, WORKING_DIR_EXCLUDES, auth_headers, build_job, follow, job_client, main,
                           pinned_requirements, submit)
from tests.helpers import free_ports
from xlc.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _write_config(path: Path, **extra) -> Path:
    raw = {
        "name": "sub",
        "data": "data/icd10cm",
        "backbone": {"name": "mlp", "hidden": [64], "dropout": 0.1},
        "head": {"name": "softmax"},
        "train": {"epochs": 1, "batch_size": 32},
        "workers": 2,
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_build_job_entrypoint_env_and_metadata(tmp_path):
    config = _write_config(tmp_path / "configs" / "run.yaml")
    job = build_job(
        config,
        overrides=["train.epochs=2", "backbone.hidden=[64, 32]"],
        working_dir=tmp_path,
        env={"NCCL_DEBUG": "WARN"},
        tracking_uri="http://mlflow.internal:5000",
    )
    argv = shlex.split(job["entrypoint"])
    # The path is relative to the uploaded dir (the job's cwd); the tracking URI travels as an override too.
    assert argv == [*ENTRYPOINT, "configs/run.yaml", "train.epochs=2", "backbone.hidden=[64, 32]",
                    "tracking.uri=http://mlflow.internal:5000"]
    env = job["runtime_env"]["env_vars"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.internal:5000"
    assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["NCCL_DEBUG"] == "WARN"
    assert job["runtime_env"]["working_dir"] == str(tmp_path.resolve())
    assert "pip" not in job["runtime_env"]  # default: the cluster image has the dependencies
    assert job["metadata"] == {"xlc_run": "sub", "xlc_config": "configs/run.yaml"}
    assert job["submission_id"].startswith("xlc-sub-")
    assert build_job(config, working_dir=tmp_path)["submission_id"] != job["submission_id"]

    with_pip = build_job(config, working_dir=tmp_path, pip=["numpy==2.4.6"])
    assert with_pip["runtime_env"]["pip"] == {"packages": ["numpy==2.4.6"], "pip_check": False}


def test_excludes_as_ray_packs_them(tmp_path):
    """Ray's own packer, given our excludes, keeps the code and drops venvs, datasets, runs and git."""
    from ray._private.runtime_env.packaging import _zip_files

    kept = ["xlc/data/reader.py", "xlc/cli.py", "data_tools/builders/icd10cm.py",
            "cluster_configs/examples/icd10cm-mhp.yaml", "cluster_configs/deepspeed/cpu_fp32.json", "constraints.txt"]
    dropped = [".venv/lib/python3.11/site-packages/torch/x.py", ".git/HEAD", "data/icd10cm/meta.json",
               "data/icd10cm/train/part-0.parquet", "xlc-runs/mlflow.db", "xlc-runs/checkpoints/a/b.pt",
               "tests/cache/x.parquet", "xlc/__pycache__/cli.cpython-311.pyc", "xlc.egg-info/PKG-INFO"]
    for rel in kept + dropped:
        (tmp_path / "repo" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "repo" / rel).write_text("x")
    _zip_files(str(tmp_path / "repo"), WORKING_DIR_EXCLUDES, str(tmp_path / "pkg.zip"), include_gitignore=False)
    names = set(zipfile.ZipFile(tmp_path / "pkg.zip").namelist())
    assert set(kept) <= names
    assert not names & set(dropped), sorted(names & set(dropped))


def test_auth_token_found_where_ray_documents_it(tmp_path, monkeypatch):
    """$RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token; none at all sends no header."""
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert auth_headers() == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home-token\n")
    assert auth_headers() == {"Authorization": "Bearer home-token"}
    (tmp_path / "elsewhere").write_text("path-token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "elsewhere"))
    assert auth_headers() == {"Authorization": "Bearer path-token"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env-token")
    assert auth_headers() == {"Authorization": "Bearer env-token"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert auth_headers() == {}
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="RAY_AUTH_TOKEN_PATH=.*missing.*no such file"):
        auth_headers()


def test_pinned_requirements_follow_constraints():
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    reqs = pinned_requirements(ROOT)
    assert "faiss-gpu-cu12==" + pins["faiss-gpu-cu12"] in reqs and not any("faiss-cpu" in r for r in reqs)
    assert "faiss-cpu==" + pins["faiss-cpu"] in pinned_requirements(ROOT, "cpu")
    names = {r.split("==")[0].split("[")[0].lower().replace("_", "-") for r in reqs}
    assert "ray" not in names  # the cluster runs Ray already; its version must match the client's
    assert "torch==2.13.0" in reqs and "mlflow==" + pins["mlflow"] in reqs
    for r in reqs:
        name, _, version = r.partition("==")
        canon = {k.lower().replace("_", "-"): v for k, v in pins.items()}
        assert version == canon[name.lower().replace("_", "-")], r
    assert len(reqs) == len(names)


def test_user_errors_name_the_problem(tmp_path):
    config = _write_config(tmp_path / "wd" / "run.yaml")
    outside = _write_config(tmp_path / "elsewhere.yaml")
    with pytest.raises(ConfigError, match="must lie inside the uploaded working dir"):
        build_job(outside, working_dir=tmp_path / "wd")
    with pytest.raises(ConfigError, match="file not found"):
        build_job(tmp_path / "wd" / "nope.yaml", working_dir=tmp_path / "wd")
    with pytest.raises(ConfigError, match="'epochs2': expected key=value"):
        build_job(config, overrides=["epochs2"], working_dir=tmp_path / "wd")
    # The run config is validated before anything is uploaded: a misspelt key is named.
    with pytest.raises(ConfigError, match="train.epoch: unknown key"):
        build_job(config, overrides=["train.epoch=2"], working_dir=tmp_path / "wd")
    with pytest.raises(ConfigError, match="conflicts with the override tracking.uri"):
        build_job(config, overrides=["tracking.uri=sqlite:///a.db"], working_dir=tmp_path / "wd", tracking_uri="http://b")


def test_main_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)
    config = _write_config(tmp_path / "run.yaml")
    assert main([str(config), "--address", "http://127.0.0.1:9", "train.epochs=zero"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.epochs='zero': expected int" in err[0]
    assert main([str(config), "--address", "http://127.0.0.1:9", "--env", "NOEQUALS"]) == 2
    assert "--env 'NOEQUALS': expected NAME=VALUE" in capsys.readouterr().err
    assert main([str(config)]) == 2  # --address is required
    assert "--address" in capsys.readouterr().err


def test_dry_run_prints_one_plain_ray_job_submit_line(tmp_path, monkeypatch, capsys):
    """The line is Ray's own CLI, shell-quoted; it carries the job `build_job` makes, and nothing is contacted
    (nothing listens at the address)."""
    monkeypatch.chdir(tmp_path)
    _write_config(tmp_path / "configs" / "run.yaml")
    overrides = ["backbone.hidden=[64, 32]", "name=it-s"]
    address = f"http://127.0.0.1:{free_ports()[0]}"
    assert main(["configs/run.yaml", "--address", address, *overrides, "--env", "A=b c", "--tracking-uri",
                 "http://mlflow:5000", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    argv = shlex.split(out)
    assert argv[:8] == ["ray", "job", "submit", "--address", address, "--working-dir", ".", "--runtime-env-json"]
    job = build_job("configs/run.yaml", overrides=overrides, env={"A": "b c"}, tracking_uri="http://mlflow:5000")
    assert json.loads(argv[8]) == {k: v for k, v in job["runtime_env"].items() if k != "working_dir"}
    assert argv[9] == "--" and argv[10:] == shlex.split(job["entrypoint"])
    assert argv[10:] == [*ENTRYPOINT, "configs/run.yaml", *overrides, "tracking.uri=http://mlflow:5000"]


@pytest.mark.parametrize("address, message", [
    ("http://127.0.0.1:{port}", "nothing answers there (Connection refused)"),
    ("not-a-url", "not an http:// or https:// URL"),
])
def test_an_address_without_a_dashboard_fails_fast_in_one_line(tmp_path, monkeypatch, capsys, address, message):
    monkeypatch.chdir(tmp_path)
    config = _write_config(tmp_path / "run.yaml")
    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        address = address.format(port=s.getsockname()[1])
        tic = time.perf_counter()
        assert main([str(config), "--address", address]) == 2
    assert time.perf_counter() - tic < 5
    assert capsys.readouterr().err == (f"error: --address {address}: {message}; "
                                       "expected the Ray dashboard URL, e.g. http://HEAD:8265\n")


@pytest.mark.integration
@pytest.mark.slow  # ~2 min on 2 cores: Ray head start, a 2-worker DeepSpeed run
def test_submit_real_run_to_local_head(ray_head, icd10cm_small, tmp_path, capsys):
    """The repository is the working dir, an example config the run; the job must succeed and log to MLflow."""
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobStatus

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [
        "name=submit-it", f"data={icd10cm_small}", f"storage.path={tmp_path / 'ckpt'}",
        "backbone.hidden=[64]", "train.epochs=1", "train.max_steps=4", "train.batch_size=64", "eval.max_rows=256",
    ]
    job_id = submit("cluster_configs/examples/icd10cm-mhp.yaml", ray_head, overrides=overrides, working_dir=ROOT,
                    tracking_uri=uri)
    out = capsys.readouterr().out
    assert f"submitted job {job_id}" in out and f"ray job logs --follow --address {ray_head} {job_id}" in out

    client = job_client(ray_head)
    deadline = time.monotonic() + 480
    while (status := client.get_job_status(job_id)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.monotonic() < deadline, f"job {job_id} still {status}:\n{client.get_job_logs(job_id)[-3000:]}"
        time.sleep(3)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-5000:]
    info = client.get_job_info(job_id)
    assert info.metadata == {"xlc_run": "submit-it", "xlc_config": "cluster_configs/examples/icd10cm-mhp.yaml"}

    mlflow = MlflowClient(uri)
    experiment = mlflow.get_experiment_by_name("icd10cm")  # the example's tracking.experiment
    runs = mlflow.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'submit-it'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].info.run_id in logs  # `xlc train` prints the run id
    assert runs[0].data.params["head.name"] == "mhp" and runs[0].data.params["deepspeed"].endswith("cpu_fp32.json")
    assert "p_at_1" in runs[0].data.metrics

    streamed = io.StringIO()  # what `submit(..., no_wait=False)` and `xlc submit --wait` print
    assert follow(ray_head, job_id, out=streamed) == "SUCCEEDED"
    assert runs[0].info.run_id in streamed.getvalue()


@pytest.mark.integration
@pytest.mark.slow  # ~1 min on 2 cores beside the test above: one single-worker run of a few steps
def test_dry_run_line_runs_with_rays_own_cli(ray_head, tmp_path, monkeypatch, capsys):
    """What `xlc submit --dry-run` prints, run as it stands by `ray job submit` (the venv's Ray CLI) from the
    repository root; the token reaches the head the documented way (RAY_AUTH_MODE=token, the token file)."""
    from mlflow.tracking import MlflowClient

    from data_tools.builders import synthetic

    data = synthetic.build(str(tmp_path / "syn"), samples=600, labels=20, features=100)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(ROOT)
    assert main(["cluster_configs/examples/icd10cm-mhp.yaml", "--address", ray_head, "--tracking-uri", uri,
                 "--dry-run", "name=plain-cli", f"data={data}", f"storage.path={tmp_path / 'ckpt'}", "workers=1",
                 "backbone.hidden=[32]", "train.max_steps=3", "train.batch_size=64"]) == 0
    line = capsys.readouterr().out.strip()
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, RAY_AUTH_MODE="token", PATH=bin_dir + os.pathsep + os.environ["PATH"])
    done = subprocess.run(["bash", "-c", line], cwd=ROOT, env=env, capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]  # `ray job submit` exits 1 if the job failed
    assert "succeeded" in done.stdout

    mlflow = MlflowClient(uri)
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("icd10cm").experiment_id],
                              filter_string="attributes.run_name = 'plain-cli'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and "p_at_1" in runs[0].data.metrics
    assert runs[0].info.run_id in done.stdout  # the job's log, streamed by Ray's CLI
