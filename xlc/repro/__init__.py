"""`xlc repro NAME`: small CPU experiments that check the seed papers' claims, one module per experiment.

`run(name, size, seed, uri, data_cache, threads)` runs one in this process, logs its table (`table.json`, `table.md`) and
figures to the MLflow experiment `repro-NAME`, and returns (run_id, report). Heads never import this package.
"""

from __future__ import annotations

import importlib
import tempfile
import time
from pathlib import Path

import torch

from xlc import tracking
from xlc.errors import ConfigError
from xlc.repro._common import SIZES, Report, Setting

EXPERIMENTS = ("theorem3", "collapse", "decomposition", "rank", "substructure")  # module xlc.repro.NAME, `run(Setting)`


def run(name: str, size: str, seed: int, uri: str | None, data_cache: Path, threads: int = 1) -> tuple[str, Report]:
    """Run experiment `name` at `size` on `threads` torch threads (restored after) and log it as a new run of
    MLflow experiment `repro-NAME`."""
    if name not in EXPERIMENTS:
        raise ConfigError(f"repro {name!r}: expected one of {', '.join(EXPERIMENTS)}")
    if threads < 1:
        raise ConfigError(f"--threads {threads}: expected >= 1")
    if size not in SIZES:
        raise ConfigError(f"--size {size!r}: expected one of {', '.join(SIZES)}")
    uri = tracking.resolve_uri(uri)
    with tempfile.TemporaryDirectory(prefix=f"xlc-repro-{name}-") as figures:
        start, before = time.monotonic(), torch.get_num_threads()
        torch.set_num_threads(threads)  # small matrices: extra threads only spin, worst on a shared machine
        try:
            report = importlib.import_module(f"xlc.repro.{name}").run(Setting(size, seed, Path(figures), Path(data_cache)))
        finally:
            torch.set_num_threads(before)
        seconds = time.monotonic() - start
        params = tracking.flatten({"size": size, "seed": seed, "threads": threads, **report.params})
        run_id, _ = tracking.start_run(
            uri, f"repro-{name}", f"{name}-{size}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}", params,
            {"repro": name, "size": size}, description=report.claim)
        logger = tracking.RunLogger(uri, run_id)
        logger.metrics({"wall_seconds": seconds}, step=0)
        logger.dict(report.to_dict(), "table.json")
        logger.text(report.markdown() + "\n", "table.md")
        for figure in report.figures:
            logger.artifact(figure, "figures")
        tracking.end_run(uri, run_id)
    return run_id, report


__all__ = ["EXPERIMENTS", "run"]
