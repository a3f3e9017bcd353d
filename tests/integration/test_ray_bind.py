"""The Ray that `xlc train` starts itself (`xlc.train.trainer.ensure_ray`) listens on the loopback interface only."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # ~35 s: a Ray of its own

# In a fresh process (the address is read when `ray` is imported): start Ray as `xlc train` does, run a task so a
# worker exists, then report what every process of that Ray listens on.
PROBE = """
from xlc.train.trainer import ensure_ray  # before any other `import ray`, as in `xlc train`
import json, os, psutil, ray
ensure_ray(1)
ray.get(ray.remote(lambda: os.getpid()).remote())
listening = [(p.name(), c.laddr.ip) for p in psutil.Process().children(recursive=True)
             for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
listening += [("driver", c.laddr.ip) for c in psutil.Process().net_connections("tcp") if c.status == psutil.CONN_LISTEN]
print(json.dumps(listening))
ray.shutdown()
"""


def test_a_ray_started_by_xlc_listens_on_127_0_0_1_only(tmp_path):
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    listening = json.loads(proc.stdout.strip().splitlines()[-1])
    names = {name for name, _ in listening}
    assert {"gcs_server", "raylet", "driver"} <= names, listening
    assert [(name, ip) for name, ip in listening if ip not in ("127.0.0.1", "::ffff:127.0.0.1")] == []
