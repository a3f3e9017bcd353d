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


def stop_tree(root, temp_dir: str) -> None:
    """End `root` (a psutil.Process running `ray start --block`) and everything it started, plus strays naming
    `temp_dir`. Only these processes: never `ray stop`, which stops every Ray on the machine."""
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


@contextlib.contextmanager
def ray_head(num_cpus: int = 4) -> Iterator[dict]:
    """A fresh Ray head from `ray start --head --block`, bound to 127.0.0.1 with the dashboard (Ray Train's
    worker-group cleanup and the Jobs API run through it). Yields {"address": GCS host:port, the value for
    RAY_ADDRESS, "dashboard": the Jobs API URL, "client_env": what a process connecting with `ray.init()`
    needs in its environment}; on exit ends exactly the processes this head started."""
    import psutil
    from ray.exceptions import AuthenticationError

    from launch.submit import job_client

    # A short temp dir: Ray's unix socket paths under it must stay below ~107 bytes. Its own
    # ray_current_cluster file lives there too, so other sessions' `ray.init()` never find this head.
    temp_dir = tempfile.mkdtemp(prefix="xlcray", dir="/tmp")
    gcs, dash, client, agent_http, agent_grpc, env_agent, metrics, node_mgr, obj_mgr = free_ports(9)
    bin_dir = str(Path(sys.executable).parent)
    # Workers inherit this environment (PYTHONPATH included, so they import the code under test).
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
               PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    env.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")  # as xlc.train.trainer.ensure_ray sets it
    # On SIGTERM the head first drains its node for up to 30 s, waiting for actors (Ray Data's stats actor stays)
    # to leave; a test head has nothing to drain.
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    env.pop("RAY_ADDRESS", None)
    # Token auth, as a new Ray >= 2.5x head has by default (creating ~/.ray/auth_token if missing). Said explicitly
    # so clients can be told: `ray.init` connecting to a cluster sends the token only with RAY_AUTH_MODE=token;
    # launch.submit.job_client finds the token by itself.
    env["RAY_AUTH_MODE"] = "token"
    cmd = [
        str(Path(bin_dir) / "ray"), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}",
        # logical CPUs: 2 train workers + Ray Data read tasks (Ray does not pin them to cores)
        f"--num-cpus={num_cpus}", "--num-gpus=0", "--object-store-memory=300000000",
        f"--port={gcs}", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
        f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
    ]
    log_path = Path(temp_dir) / "ray-start.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    root = psutil.Process(proc.pid)
    dashboard = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                job_client(dashboard).list_jobs()
                break
            except AuthenticationError:
                raise
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        address = f"127.0.0.1:{gcs}"
        yield {"address": address, "dashboard": dashboard,
               "client_env": {"RAY_ADDRESS": address, "RAY_AUTH_MODE": "token"}}
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
