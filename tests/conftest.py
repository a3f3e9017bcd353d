"""Shared fixtures: `spawn_gloo` runs one test body on N gloo processes; `icd10cm_small` is a small real dataset;
`s3` an S3 server on 127.0.0.1 (moto).

Helpers for test modules (`assert_close`, ...) live in tests/helpers.py; `assert_close` is re-exported here for
modules that still import it from this conftest.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.helpers import S3_ENV, S3Server, assert_close, free_ports, s3_server

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
torch.set_num_threads(1)


__all__ = ["assert_close"]


def _worker(rank, world_size, port, fn, args, errors):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
    except BaseException:
        errors.put((rank, traceback.format_exc()))
        raise
    finally:
        dist.destroy_process_group()


def run_gloo(world_size: int, fn, *args) -> None:
    """Run `fn(rank, world_size, *args)` on `world_size` gloo processes; re-raise any child failure."""
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    (port,) = free_ports(1)
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, fn, args, errors)) for r in range(world_size)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    if not errors.empty():
        rank, tb = errors.get()
        raise AssertionError(f"rank {rank} failed:\n{tb}")
    for r, p in enumerate(procs):
        if p.exitcode != 0:
            p.kill()
            raise AssertionError(f"rank {r} exited with {p.exitcode}")


@pytest.fixture
def spawn_gloo():
    """`spawn_gloo(n, fn, *args)`: fn must be a module-level function (it is pickled for spawn)."""
    return run_gloo


@pytest.fixture(scope="session")
def icd10cm_small(tmp_path_factory) -> Path:
    """A seeded 7,500-row subset of ICD-10-CM (6,079 train / 1,421 test rows, 1,467 of the 1,918 categories),
    built once per session: the real text dataset of the integration and launch tests."""
    from data_tools.builders import icd10cm

    return icd10cm.build(str(tmp_path_factory.mktemp("data") / "icd10cm-small"), max_samples=7500)


@pytest.fixture
def s3(monkeypatch) -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1, started for this test and stopped after it whatever happens, with one empty
    bucket; the credentials for it in the environment, so `xlc` subprocesses and the Ray they start inherit them."""
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    with s3_server() as server:
        yield server

