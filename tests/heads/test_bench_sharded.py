"""`xlc.bench.sharded`: rows for every head spec x world, per-rank parameters falling with the world size,
collective traffic counted (zero on one rank), and bad specs named."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from xlc.bench.sharded import CommCounter, format_table, parse_spec, run
from xlc.errors import ConfigError

C, B, D = 1000, 16, 8
SPECS = ["sharded_softmax", "sharded_softmax:sample_rate=0.1", "sharded_bce", "mhc_sharded:group_size=10:hidden=8"]


def test_rows_memory_and_traffic_per_world():
    rows = run(SPECS + ["mhc_sharded:candidates=0", SPECS[0]], [C], B, D, [1, 2], repeats=2)
    by = {(r["head"], r["world"]): r for r in rows[:5] + rows[6:11]}
    assert len(rows) == 12
    assert rows[11]["comm_bytes"] == rows[6]["comm_bytes"]  # counted per step, not accumulated over specs
    for world in (1, 2):
        assert "candidates=0" in by["mhc_sharded:candidates=0", world]["skipped"]
    for spec in SPECS:
        one, two = by[spec, 1], by[spec, 2]
        assert one["step_ms"] > 0 and two["step_ms"] > 0
        assert one["comm_bytes"] == 0
        # at least the forward feature all-gather of a rank's B/2 rows: (W - 1) * B/2 * d * 4 bytes
        assert two["comm_bytes"] >= B // 2 * D * 4
    # the label-sharded parameters halve: C/2 rows of [d] weights + bias
    for spec in SPECS[:3]:
        assert by[spec, 1]["param_bytes"] == C * (D + 1) * 4
        assert by[spec, 2]["param_bytes"] == C // 2 * (D + 1) * 4
    # mhc: table rows halve (100 groups of 10 -> 50 groups per rank), group head and projection replicated
    replicated = (100 * (D + 1) + 8 * (D + 1)) * 4
    assert by[SPECS[3], 1]["param_bytes"] == C * 8 * 4 + replicated
    assert by[SPECS[3], 2]["param_bytes"] == C // 2 * 8 * 4 + replicated
    table = format_table(rows)
    assert table.count("\n") == 13 and "skipped: candidates=0" in table


def _check_counter(rank, world_size):
    import torch

    counter = CommCounter(world_size)
    counter.active = True
    dist.all_reduce(torch.ones(100))
    dist.all_gather([torch.empty(10) for _ in range(world_size)], torch.ones(10))
    assert counter.bytes == int(2 * (world_size - 1) / world_size * 400) + (world_size - 1) * 40


def test_comm_counter_charges_ring_costs(spawn_gloo):
    spawn_gloo(2, _check_counter)


def test_parse_spec():
    assert parse_spec("sharded_softmax:sample_rate=0.1:seed=3") == ("sharded_softmax", {"sample_rate": 0.1, "seed": 3})
    with pytest.raises(ConfigError, match="unknown"):
        parse_spec("nope")
    with pytest.raises(ConfigError, match="option=value"):
        parse_spec("sharded_bce:chunk")


def test_bench_heads_reports_a_config_error_as_skipped():
    from xlc.bench.heads import run as run_heads

    (row,) = run_heads(["mhc"], [50], 8, 8, "cpu", repeats=1, options={"mhc": {"num_groups": 100}})
    assert row["step_ms"] is None and "num_groups=100" in row["skipped"]
