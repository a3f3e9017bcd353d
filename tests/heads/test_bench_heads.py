"""`xlc.bench.heads` on tiny sizes: every field is filled, skips are reported, the CLI prints a table and JSON."""

from __future__ import annotations

import json

import pytest

from xlc.bench.heads import format_table, main, run
from xlc.errors import ConfigError

HEADS = ["softmax", "chunked_softmax", "bce", "rbf"]


def test_run_measures_every_head_and_label_count():
    rows = run(HEADS, [50, 300], batch=8, dim=4, device="cpu", dtype="float32", repeats=2, k=3, options={"rbf": {"gamma": 4.0}})
    assert [(r["head"], r["labels"]) for r in rows] == [(h, c) for c in (50, 300) for h in HEADS]
    for r in rows:
        assert r["skipped"] is None and r["step_ms"] > 0 and r["topk_ms"] > 0
        assert r["params"] == r["labels"] * 4 + (0 if r["head"] == "rbf" else r["labels"])
        assert r["peak_mem_bytes"] is None or r["peak_mem_bytes"] >= 0
    table = format_table(rows)
    assert table.count("\n") == 1 + len(rows) and "| chunked_softmax | 300 | 1,500 |" in table


def test_peak_memory_sees_the_full_logits():
    """softmax holds B x C fp32 logits (here 32 x 200k x 4 bytes = 24 MiB) and their softmax and gradient."""
    rows = run(["softmax"], [200_000], batch=32, dim=2, device="cpu", repeats=1, k=1)
    peak = rows[0]["peak_mem_bytes"]
    if peak is None:
        pytest.skip("/proc/self/clear_refs is not writable here")
    assert peak > 32 * 200_000 * 4  # at least the [B, C] fp32 logits


def test_combos_over_the_memory_cap_are_skipped():
    rows = run(["softmax", "chunked_softmax"], [100_000], batch=64, dim=4, repeats=1, memory_cap_bytes=20 * 2**20)
    assert rows[0]["skipped"] == "would materialise 0.08 GiB (cap 0.02 GiB)" and rows[0]["step_ms"] is None
    assert rows[1]["skipped"] is None
    assert "skipped: would materialise" in format_table(rows)


def test_main_prints_table_then_json(capsys):
    assert main(["--heads", "softmax,bce", "--labels", "1e2", "--batch", "4", "--dim", "3", "--repeats", "1", "--device", "cpu", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("| head |")
    assert [r["head"] for r in json.loads(out[-1])] == ["softmax", "bce"]


def test_user_errors():
    with pytest.raises(ConfigError, match="mhx unknown; expected some of .*softmax"):
        run(["mhx"], [10], batch=2, dim=2)
    with pytest.raises(ConfigError, match="--labels='1e3,x'"):
        main(["--labels", "1e3,x"])
    with pytest.raises(ConfigError, match="--options"):
        main(["--options", "{bad"])
