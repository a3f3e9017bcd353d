"""`xlc submit` to a Ray cluster of two nodes on 127.0.0.1 (a head and one more node: separate raylets, object
stores and agents, one CPU each, so the two training workers land one per node; tests/ray_cluster.py). A
local-disk `storage.path` is refused (exit 2 with the reason) by `xlc submit` and by the job's driver; declared
shared, the run trains on both nodes, survives losing the second node mid-run (SIGKILL to all its processes),
and resumes from its newest checkpoint on a replacement node, as an autoscaler would bring one, to completion."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from launch.submit import build_job, job_client, state_client, submit_when_an_agent_answers
from tests.helpers import RayCluster, ray_cluster
from xlc.cli import main
from xlc.train import checkpoint as ckpt

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = "cluster_configs/examples/icd10cm-mhp.yaml"  # inside the uploaded working dir; data and sizes overridden
EPOCHS = 8  # long enough that the kill, seconds after the first checkpoint, lands well before the end
STEPS = EPOCHS * 25  # 25 batches of 64 per worker and epoch (3,182 training rows of the synthetic set, 2 workers)
EVERY = 5  # checkpoint every 5 steps (each epoch's end, 25 steps, is one of them)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from data_tools.builders import synthetic

    return synthetic.build(str(tmp_path_factory.mktemp("data") / "synthetic"), samples=4000, labels=1000,
                           features=4096, seed=0)


def _overrides(name: str, data: Path, storage: Path, *extra: str) -> list[str]:
    return [f"name={name}", f"data={data}", f"storage.path={storage}", "backbone.hidden=[64]", f"train.epochs={EPOCHS}",
            "train.batch_size=64", f"train.checkpoint_every_steps={EVERY}", "train.log_every_steps=1",
            "eval.max_rows=256", *extra]


def _submit(capsys, *args: str) -> tuple[int, str, str]:
    """`xlc submit ARGS` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(["submit", *args])
        status = 0
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def _wait(dashboard: str, job_id: str, until=None, timeout: float = 900) -> str:
    """Poll the job every second until it ends or `until(its log)` is true; return its log."""
    client = job_client(dashboard)
    deadline = time.monotonic() + timeout
    while True:
        logs = client.get_job_logs(job_id)
        if (until is not None and until(logs)) or client.get_job_status(job_id).is_terminal():
            return logs
        assert time.monotonic() < deadline, f"job {job_id}: timed out\n{logs[-4000:]}"
        time.sleep(1)


def _worker_nodes(dashboard: str) -> list[str]:
    """The node ids of the alive Ray Train workers, sorted."""
    from ray.util.state.common import ListApiOptions, StateResource

    actors = state_client(dashboard).list(
        StateResource.ACTORS, ListApiOptions(filters=[("state", "=", "ALIVE")]), raise_on_missing_output=False)
    return sorted(a.node_id for a in actors if "RayTrainWorker" in a.class_name)


def test_a_local_disk_is_refused_then_the_run_loses_a_node_and_resumes(data, tmp_path, capsys):
    """One scenario on one cluster (pytest-xdist would give two tests of this module a cluster each, four
    nodes on two cores). A local-disk `storage.path`: `xlc submit` refuses before uploading anything, and a job
    submitted past it (`ray job submit`, KubeRay) is refused by its driver with the same line, before MLflow or
    any worker starts. Declared shared: the run trains one worker per node, loses node2 mid-run and resumes on
    its replacement to completion."""
    (tmp_path / "local").mkdir()
    (tmp_path / "shared").mkdir()
    with ray_cluster(head_cpus=1) as cluster:
        node2 = cluster.add("node2", num_cpus=1)
        _local_disk_exits_2_with_the_reason(cluster, data, tmp_path / "local", capsys)
        _workers_on_both_nodes_lose_one_and_resume(cluster, node2, data, tmp_path / "shared", capsys)


def _local_disk_exits_2_with_the_reason(cluster: RayCluster, data: Path, tmp_path: Path, capsys) -> None:
    dashboard = cluster.dashboard
    overrides = _overrides("local-disk", data, tmp_path / "ckpt")
    status, out, err = _submit(capsys, EXAMPLE, "--address", dashboard, "--working-dir", str(ROOT),
                               "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *overrides)
    reason = f"storage.path={tmp_path / 'ckpt'}: a local disk, but the cluster has 2 nodes"
    assert status == 2 and err.startswith(f"error: {reason}") and err.count("\n") == 1, err
    assert "storage.shared=true" in err and "submitted job" not in out
    assert not any(j.metadata.get("xlc_run") == "local-disk" for j in job_client(dashboard).list_jobs())

    job = build_job(ROOT / EXAMPLE, overrides=overrides, working_dir=ROOT)
    job_id = submit_when_an_agent_answers(job_client(dashboard), job)
    logs = _wait(dashboard, job_id, timeout=300)
    info = job_client(dashboard).get_job_info(job_id)
    assert info.status == "FAILED" and "exit code 2" in info.message, (info.message, logs[-3000:])
    assert f"error: {reason}" in logs and "Traceback" not in logs, logs[-3000:]
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "mlflow.db").exists()


def _workers_on_both_nodes_lose_one_and_resume(cluster: RayCluster, node2: str, data: Path, tmp_path: Path,
                                               capsys) -> None:
    dashboard, uri = cluster.dashboard, f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "ckpt"  # one machine's disk, so physically shared: declared so
    status, out, err = _submit(capsys, EXAMPLE, "--address", dashboard, "--working-dir", str(ROOT),
                               "--tracking-uri", uri,
                               *_overrides("two-nodes", data, storage, "storage.shared=true", "storage.max_failures=3"))
    assert status == 0, err
    job_id = re.search(r"submitted job (\S+):", out).group(1)

    # after the first checkpoint verifies, while both workers train: one per node
    step = re.compile(rf"\[two-nodes\] epoch \d+/{EPOCHS} step (\d+) loss")
    logs = _wait(dashboard, job_id, lambda logs: max(map(int, step.findall(logs)), default=0) > EVERY
                 and ckpt.newest_valid(storage / "two-nodes") is not None)
    assert _worker_nodes(dashboard) == sorted([cluster.head, node2]), logs[-3000:]
    killed_at = max(map(int, step.findall(logs)))
    assert killed_at < STEPS - EVERY, f"the run got to step {killed_at} before the kill"
    cluster.kill(node2)

    node3 = cluster.add("node3", num_cpus=1)  # the replacement; Ray Train restarts the worker group on it
    placed: list[str] = []

    def replaced(logs: str) -> bool:  # workers come and go while Ray Train notices the loss and restarts them
        placed[:] = _worker_nodes(dashboard)
        return placed == sorted([cluster.head, node3])

    _wait(dashboard, job_id, replaced)
    assert placed == sorted([cluster.head, node3]), (placed, job_client(dashboard).get_job_logs(job_id)[-3000:])
    logs = _wait(dashboard, job_id)
    assert job_client(dashboard).get_job_status(job_id) == "SUCCEEDED", logs[-5000:]
    mlflow = MlflowClient(uri)
    run = mlflow.search_runs([mlflow.get_experiment_by_name("icd10cm").experiment_id],  # the example's experiment
                             filter_string="attributes.run_name = 'two-nodes'")[0]
    assert run.info.status == "FINISHED"
    resumed = int(run.data.tags["resumed_from_step"])  # the restarted workers' first step
    # from a checkpoint (every 5 steps) no older than the last one complete when step `killed_at` was logged
    assert (killed_at - 1) // EVERY * EVERY <= resumed < STEPS and resumed % EVERY == 0, (killed_at, resumed)
    assert [m.step for m in mlflow.get_metric_history(run.info.run_id, "p_at_1")][-1] == STEPS
    # it learned across the loss: 0.69 on 2026-11-28; the most frequent test label is on 11.5% of the rows
    assert run.data.metrics["p_at_1"] > 0.6
    assert re.search(r"restart|fail", logs, re.IGNORECASE), logs[-3000:]
