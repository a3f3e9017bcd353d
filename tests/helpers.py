"""Plain helpers shared by test modules and conftests (fixtures live in the conftests, built from these).

Test modules never import each other or a conftest: what more than one module needs is here or a fixture.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
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


def stop_tree(root, temp_dir: str) -> None:
    """End `root` (a psutil.Process that started a Ray: `ray start --block`, tests/ray_cluster.py) and everything
    it started, plus strays naming `temp_dir`. Only these processes: never `ray stop`, which stops every Ray on
    the machine."""
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
    try:
        root.terminate()  # `ray start --block` stops what it started (~5 s; SIGTERM to each process takes 10+)
    except psutil.NoSuchProcess:
        pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=20)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


def _ray_env(temp_dir: str) -> dict[str, str]:
    """The environment of a test's Ray, which its nodes, job drivers and workers inherit (PYTHONPATH included,
    so they import the code under test)."""
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
               PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    env.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")  # as xlc.train.trainer.ensure_ray sets it
    # On SIGTERM a node first drains for up to 30 s, waiting for actors (Ray Data's stats actor stays) to leave;
    # a test node has nothing to drain.
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    env.pop("RAY_ADDRESS", None)
    # Token auth, as a new Ray >= 2.5x head has by default (creating ~/.ray/auth_token if missing). Said explicitly
    # so clients can be told: `ray.init` connecting to a cluster sends the token only with RAY_AUTH_MODE=token;
    # launch.submit.job_client finds the token by itself.
    env["RAY_AUTH_MODE"] = "token"
    # Every node takes 127.0.0.1 as its address and listens there only (GCS, raylet, agents); otherwise Ray
    # replaces `--node-ip-address=127.0.0.1` by the machine's address and listens on every interface.
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # Ray's default temp dir: tests/ray_cluster.py (ray.cluster_utils) writes, then deletes, the address file that
    # `ray.init()` looks for there; in /tmp/ray it would replace another session's.
    env["RAY_TMPDIR"] = temp_dir
    return env


def _wait_for_jobs_api(proc: subprocess.Popen, log_path: Path, dashboard: str, timeout: float = 180) -> None:
    """Until the Jobs API at `dashboard` answers; fail with the log when `proc`, which starts it, exits first."""
    from ray.exceptions import AuthenticationError

    from launch.submit import job_client

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            job_client(dashboard).list_jobs()
            return
        except AuthenticationError:
            raise
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


@contextlib.contextmanager
def _ray_process(cmd: Callable[[str], list[str]], **popen) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """Run `cmd(temp_dir)`, a process that starts a Ray in `temp_dir`, a fresh directory (short: Ray's unix
    socket paths under it must stay below ~107 bytes), with `_ray_env`; its output goes to a log file there
    unless `popen` says otherwise. Yields (the process, the temp dir, the log path); on exit ends exactly the
    processes it started."""
    import psutil

    temp_dir = tempfile.mkdtemp(prefix="xlcray", dir="/tmp")
    (Path(temp_dir) / "ray").mkdir()  # Ray's default temp dir under RAY_TMPDIR (`_ray_env`)
    log_path = Path(temp_dir) / "ray.log"
    log = open(log_path, "w")
    popen = {"stdout": log, "stderr": log, **popen}
    proc = subprocess.Popen(cmd(temp_dir), env=_ray_env(temp_dir), start_new_session=True, **popen)
    root = psutil.Process(proc.pid)
    try:
        yield proc, temp_dir, log_path
    finally:
        stop_tree(root, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


# What pyarrow (and boto-style clients) need to talk to moto: any credentials pass; no instance-metadata lookups.
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}


@dataclasses.dataclass(frozen=True)
class S3Server:
    """moto's S3 API on 127.0.0.1:`port`, with one empty bucket, `bucket` (credentials: `S3_ENV` in the environment)."""

    port: int
    bucket: str = "xlc"

    def uri(self, key: str) -> str:
        """s3://BUCKET/KEY with the pyarrow query options that point at this server."""
        return f"s3://{self.bucket}/{key}?endpoint_override=127.0.0.1:{self.port}&scheme=http"

    def location(self, key: str):
        """`xlc.data.open_location(self.uri(key))`."""
        from xlc.data import open_location

        return open_location(self.uri(key))

    def upload(self, local: Path, key: str) -> str:
        """Copy the directory `local` to BUCKET/KEY; its URI."""
        import pyarrow.fs as pafs

        target = self.location(key)
        pafs.copy_files(str(local), target.path, pafs.LocalFileSystem(), target.fs)
        return self.uri(key)


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server (the real S3 REST API, in memory) on a free port of 127.0.0.1, in a thread of this process,
    with an empty bucket; on exit, whatever happened, its state is reset and it is stopped."""
    import pyarrow.fs as pafs
    import requests
    from moto.server import ThreadedMotoServer

    (port,) = free_ports(1)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        s3 = S3Server(port)
        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                          allow_bucket_creation=True).create_dir(s3.bucket)
        yield s3
    finally:
        try:
            requests.post(f"http://127.0.0.1:{port}/moto-api/reset", timeout=10)  # moto's state is per process
        finally:
            server.stop()


@contextlib.contextmanager
def ray_head(num_cpus: int = 4) -> Iterator[dict]:
    """A fresh Ray head from `ray start --head --block`, listening on 127.0.0.1 only, with the dashboard (Ray
    Train's worker-group cleanup and the Jobs API run through it). Yields {"address": GCS host:port, the value
    for RAY_ADDRESS, "dashboard": the Jobs API URL, "client_env": what a process connecting with `ray.init()`
    needs in its environment}; on exit ends exactly the processes this head started."""
    gcs, dash, client, agent_http, agent_grpc, env_agent, metrics, node_mgr, obj_mgr = free_ports(9)
    bin_dir = Path(sys.executable).parent

    def cmd(temp_dir: str) -> list[str]:
        return [
            str(bin_dir / "ray"), "start", "--head", "--block", "--disable-usage-stats",
            "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}",
            # logical CPUs: 2 train workers + Ray Data read tasks (Ray does not pin them to cores)
            f"--num-cpus={num_cpus}", "--num-gpus=0", "--object-store-memory=300000000",
            f"--port={gcs}", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
            f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
        ]

    with _ray_process(cmd) as (proc, _, log_path):
        dashboard = f"http://127.0.0.1:{dash}"
        _wait_for_jobs_api(proc, log_path, dashboard)
        address = f"127.0.0.1:{gcs}"
        # a client without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 looks for the GCS at the machine's address
        yield {"address": address, "dashboard": dashboard, "client_env": {
            "RAY_ADDRESS": address, "RAY_AUTH_MODE": "token", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}}


def _agent_ports() -> str:
    """Free ports for one node's agents, as tests/ray_cluster.py takes them."""
    return ",".join(map(str, free_ports(4)))


class RayCluster:
    """A Ray cluster of several nodes on 127.0.0.1, owned by a tests/ray_cluster.py process: `address` (GCS
    host:port), `dashboard` (the Jobs API URL), `head` (the head's node id); `add` a node, `kill` one."""

    def __init__(self, proc: subprocess.Popen, log_path: Path):
        self._proc, self._log_path = proc, log_path
        started = self._answer()
        self.address, self.dashboard, self.head = started["address"], started["dashboard"], started["head"]

    def _answer(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"tests/ray_cluster.py exited {self._proc.wait()}:\n"
                               f"{self._log_path.read_text()[-3000:]}")
        return json.loads(line)

    def _order(self, line: str) -> dict:
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()
        return self._answer()

    def add(self, name: str, num_cpus: int = 1) -> str:
        """Start a node with `num_cpus` CPUs and a custom resource `name` (1); return its node id once it runs."""
        return self._order(f"add {name} {num_cpus} {_agent_ports()}")["node_id"]

    def kill(self, node_id: str) -> None:
        """SIGKILL every process of a node the cluster added, all at once: a machine lost, nothing shuts down."""
        self._order(f"kill {node_id}")


@contextlib.contextmanager
def ray_cluster(head_cpus: int = 1) -> Iterator[RayCluster]:
    """A fresh `RayCluster` whose head has `head_cpus` CPUs and the dashboard; nodes come by `add`. On exit every
    node ends (then exactly the processes it started, whatever is left of them)."""
    (dash,) = free_ports(1)
    script = str(Path(__file__).with_name("ray_cluster.py"))
    popen = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    with _ray_process(lambda temp_dir: [sys.executable, script, str(head_cpus), str(dash), _agent_ports()],
                      **popen) as (proc, _, log_path):
        try:
            with proc.stdin, proc.stdout:
                cluster = RayCluster(proc, log_path)
                _wait_for_jobs_api(proc, log_path, cluster.dashboard)
                yield cluster
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=60)  # its input closed, it ends every node itself


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
