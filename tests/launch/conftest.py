"""`ray_head`: a real Ray head started with `ray start --head --block`, bound to 127.0.0.1 only.

Teardown ends exactly the processes this head started (its process tree, found by pid), never
`ray stop`: that stops every Ray on the machine, including other test sessions' clusters.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest


def _free_ports(n: int) -> list[int]:
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


def _stop_tree(root: psutil.Process, temp_dir: str) -> None:
    """SIGTERM the head and everything it started (plus strays naming our temp dir), then SIGKILL leftovers."""
    procs = {root.pid: root}
    try:
        procs.update({p.pid: p for p in root.children(recursive=True)})
    except psutil.NoSuchProcess:
        pass
    for p in psutil.process_iter(["cmdline"]):
        parts = p.info["cmdline"] or []
        if p.pid != os.getpid() and any(part.endswith(temp_dir) or temp_dir + os.sep in part for part in parts):
            procs.setdefault(p.pid, p)
    for p in procs.values():
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture(scope="module")
def ray_head():
    """Yield the dashboard URL (the Jobs API address) of a fresh local Ray head on 127.0.0.1."""
    from ray.exceptions import AuthenticationError

    from launch.submit import job_client

    # A short temp dir: Ray's unix socket paths under it must stay below ~107 bytes. Its own
    # ray_current_cluster file lives there too, so other sessions' `ray.init()` never find this head.
    temp_dir = tempfile.mkdtemp(prefix="xlcray", dir="/tmp")
    gcs, dash, client, agent_http, agent_grpc, env_agent, metrics, node_mgr, obj_mgr = _free_ports(9)
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_MODE", None)  # Ray's default: token auth iff a token exists; launch.submit.job_client matches it
    cmd = [
        str(Path(bin_dir) / "ray"), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}",
        # 4 logical CPUs: 2 train workers + Ray Data read tasks (Ray does not pin them to cores).
        "--num-cpus=4", "--num-gpus=0", "--object-store-memory=300000000",
        f"--port={gcs}", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
        f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
    ]
    log = open(Path(temp_dir) / "ray-start.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    root = psutil.Process(proc.pid)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited {proc.returncode}:\n{(Path(temp_dir) / 'ray-start.log').read_text()[-3000:]}")
            try:
                job_client(address).list_jobs()
                break
            except AuthenticationError:
                raise
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        yield address
    finally:
        _stop_tree(root, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
