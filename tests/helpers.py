"""Plain helpers shared by test modules and conftests (fixtures live in the conftests, built from these).

Test modules never import each other or a conftest: what more than one module needs is here or a fixture.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch


def assert_close(actual, expected, atol=1e-6, rtol=1e-6, msg=""):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, check_dtype=False, msg=msg or None)


class Payload:
    """A pickle that runs code: unpickling it calls open(marker, "w"), so the file appears if a loader ran it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def free_ports(n: int = 1) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1 (all bound at once, so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def last_json(stdout: str) -> dict:
    """The JSON object a `--json` command prints on its last line."""
    return json.loads(stdout.strip().splitlines()[-1])


def _tree(root, temp_dir: str) -> list:
    """`root` (a psutil.Process), its descendants, and strays whose command line names `temp_dir`."""
    import psutil

    procs = {root.pid: root}
    try:
        procs.update({p.pid: p for p in root.children(recursive=True)})
    except psutil.NoSuchProcess:
        pass
    for p in psutil.process_iter(["cmdline"]):
        parts = p.info["cmdline"] or []
        if p.pid != os.getpid() and any(part.endswith(temp_dir) or temp_dir + os.sep in part for part in parts):
            procs.setdefault(p.pid, p)
    return list(procs.values())


def _kill(procs: list) -> None:
    """SIGKILL each of `procs` (psutil.Process) and wait for them."""
    import psutil

    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(procs, timeout=10)


def stop_tree(root, temp_dir: str) -> None:
    """End `root` (a psutil.Process running `ray start --block`) and everything it started, plus strays naming
    `temp_dir`. Only these processes: never `ray stop`, which stops every Ray on the machine."""
    import psutil

    procs = _tree(root, temp_dir)
    with contextlib.suppress(psutil.NoSuchProcess):
        root.terminate()  # `ray start --block` stops what it started (~5 s; SIGTERM to each process takes 10+)
    _, alive = psutil.wait_procs(procs, timeout=20)
    _kill(alive)


def kill_tree(root, temp_dir: str) -> None:
    """SIGKILL `root` and everything `stop_tree` would end, all at once: a machine lost, nothing shuts down."""
    _kill(_tree(root, temp_dir))


@contextlib.contextmanager
def _ray_start(options: list[str], num_cpus: int) -> Iterator[tuple]:
    """`ray start --block OPTIONS` for one node bound to 127.0.0.1, in a temp dir of its own, with free ports;
    yields (its subprocess.Popen, its psutil.Process, the temp dir, the log path) and on exit ends exactly the
    processes this node started."""
    import psutil

    # A short temp dir: Ray's unix socket paths under it must stay below ~107 bytes. Its own
    # ray_current_cluster file lives there too, so other sessions' `ray.init()` never find this node.
    temp_dir = tempfile.mkdtemp(prefix="xlcray", dir="/tmp")
    agent_http, agent_grpc, env_agent, metrics, node_mgr, obj_mgr = free_ports(6)
    bin_dir = str(Path(sys.executable).parent)
    # Workers inherit this environment (PYTHONPATH included, so they import the code under test).
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
               PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    env.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")  # as xlc.train.trainer.ensure_ray sets it
    # On SIGTERM a node first drains for up to 30 s, waiting for actors (Ray Data's stats actor stays) to
    # leave; a test node has nothing to drain.
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    env.pop("RAY_ADDRESS", None)
    # Token auth, as a new Ray >= 2.5x head has by default (creating ~/.ray/auth_token if missing). Said explicitly
    # so clients can be told: `ray.init` connecting to a cluster sends the token only with RAY_AUTH_MODE=token;
    # launch.submit.job_client finds the token by itself. A joining node needs it as well.
    env["RAY_AUTH_MODE"] = "token"
    cmd = [
        str(Path(bin_dir) / "ray"), "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
        f"--temp-dir={temp_dir}", f"--num-cpus={num_cpus}", "--num-gpus=0", "--object-store-memory=300000000",
        f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
        f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}", *options,
    ]
    log_path = Path(temp_dir) / "ray-start.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    root = psutil.Process(proc.pid)
    try:
        yield proc, root, temp_dir, log_path
    finally:
        stop_tree(root, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_until(ready, proc: subprocess.Popen, log_path: Path, what: str, timeout: float = 180):
    """Poll `ready()` once a second until it returns a true value, and return that (an exception, but for a
    refused token, counts as not yet); fail with the `ray start` log when `proc` exits or `timeout` s pass."""
    from ray.exceptions import AuthenticationError

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start ({what}) exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            found = ready()
            if found:
                return found
        except AuthenticationError:
            raise
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout} s:\n{log_path.read_text()[-3000:]}")
        time.sleep(1)


@contextlib.contextmanager
def ray_head(num_cpus: int = 4) -> Iterator[dict]:
    """A fresh Ray head from `ray start --head --block`, bound to 127.0.0.1 with the dashboard (Ray Train's
    worker-group cleanup and the Jobs API run through it). Yields {"address": GCS host:port, the value for
    RAY_ADDRESS, "dashboard": the Jobs API URL, "client_env": what a process connecting with `ray.init()`
    needs in its environment}; on exit ends exactly the processes this head started."""
    from launch.submit import job_client

    gcs, dash, client = free_ports(3)
    options = ["--head", "--dashboard-host=127.0.0.1", f"--port={gcs}", f"--dashboard-port={dash}",
               f"--ray-client-server-port={client}"]
    # logical CPUs: 2 train workers + Ray Data read tasks (Ray does not pin them to cores)
    with _ray_start(options, num_cpus) as (proc, _, _, log_path):
        dashboard = f"http://127.0.0.1:{dash}"
        _wait_until(lambda: job_client(dashboard).list_jobs() is not None, proc, log_path, "the head")
        address = f"127.0.0.1:{gcs}"
        yield {"address": address, "dashboard": dashboard,
               "client_env": {"RAY_ADDRESS": address, "RAY_AUTH_MODE": "token"}}


@contextlib.contextmanager
def ray_node(head: dict, name: str, num_cpus: int = 1, attempts: int = 3) -> Iterator[dict]:
    """One more node for the cluster of `head` (from `ray_head`): its own raylet, object store and agents on
    127.0.0.1, `num_cpus` CPUs and a custom resource `name` (1), by which it is found. Yields {"node_id": its
    Ray node id, "kill": SIGKILL the whole node now, as a lost machine}; on exit ends what is left of it.
    `ray start` gives a node 30 s to register with the GCS; on a loaded machine it may take longer, and the
    node is started again (`attempts` times in all), as an autoscaler would."""
    from launch.submit import alive_nodes

    options = [f"--address={head['address']}", f"--resources={json.dumps({name: 1})}"]
    for attempt in range(1, attempts + 1):
        with _ray_start(options, num_cpus) as (proc, root, temp_dir, log_path):
            try:
                node = _wait_until(lambda: [n for n in alive_nodes(head["dashboard"]) if name in n.resources_total],
                                   proc, log_path, f"node {name}")[0]
            except RuntimeError:  # `ray start` exited
                if attempt == attempts:
                    raise
                continue
            yield {"node_id": node.node_id, "kill": lambda: kill_tree(root, temp_dir)}
            return


@contextlib.contextmanager
def xlc_ui(cwd: Path, *args: str, timeout: float = 300) -> Iterator[dict]:
    """`xlc ui --port FREE ARGS` run from `cwd` until its /health answers (MLflow's workers start slowly on a
    loaded machine); yields {"url": its base URL, "port", "proc"}; on exit ends the server and its workers."""
    import signal
    import urllib.request

    (port,) = free_ports(1)
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    log = tempfile.TemporaryFile()  # not a pipe: a full one would stall the server, which logs every request
    proc = subprocess.Popen([sys.executable, "-m", "xlc.cli", "ui", "--port", str(port), *args], cwd=cwd, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, body = time.monotonic() + timeout, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                body = urllib.request.urlopen(f"{url}/health", timeout=2).read()
                break
            except OSError:
                time.sleep(1)
        if body is None:
            log.seek(0)
            raise AssertionError(f"xlc ui: no answer at {url}/health:\n{log.read().decode()[-3000:]}")
        assert body.strip() == b"OK"
        yield {"url": url, "port": port, "proc": proc}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server, its uvicorn workers and its job runner's consumers
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):  # what is left: shutting down can take a minute or more
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        log.close()
