"""`xlc bench train`: the training step on gloo ranks, timed per phase."""

from __future__ import annotations

from xlc.bench.train import run
from xlc.train.step import PHASES


def test_rows_per_case_with_phases_that_partition_the_step():
    cases = [{"features": f, "labels": 20, "head": "softmax", "grad": g, "hidden": [8], "batch": 16, "nnz": 4}
             for f, g in ((300, "sparse"), (300, "dense"))]
    rows = run(cases, world=2, steps=3, warmup=1)
    assert [(r["features"], r["grad"], r["world"]) for r in rows] == [(300, "sparse", 2), (300, "dense", 2)]
    for r in rows:
        step_ms = 1e3 * r["batch"] * r["world"] / r["samples_per_s"]  # wall time of one step, slowest rank
        phases = sum(r[f"{p}_ms"] for p in PHASES)  # the mean rank's phases; each step is split into them
        assert 0 < phases <= 1.05 * step_ms, (phases, step_ms)
