"""`launch/gpu_check.sh --cpu`: one report with a row per head and label count, the peers and ZeRO sections;
the peers' loss check and the targets' verdicts on a stand-in peer (the real ones need Triton and a GPU)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from xlc.bench import gpu_check
from xlc.bench.heads import bench_one

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # ~30 s: the whole prepared GPU check in its tiny CPU mode, through launch/gpu_check.sh
def test_cpu_mode_writes_the_whole_report(tmp_path):
    env = os.environ | {"OUT": str(tmp_path), "PYTHON": sys.executable}
    # one ZeRO stage: once `xlc train --local` exists, each stage is a training process of its own
    done = subprocess.run(["bash", "launch/gpu_check.sh", "--cpu", "--zero-stages", "0"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "gpu_check.md").read_text()
    assert done.stdout.strip().endswith(f"report: {tmp_path}/gpu_check.md")
    assert "- device: CPU" in report and "- date: " in report and "triton " in report
    heads = report.split("## Heads")[1].split("## Fused")[0]
    for spec in gpu_check.HEAD_SPECS:
        for labels in ("1,000", "3,000"):
            assert f"| {spec} | {labels} |" in heads
    peers = report.split("## Fused linear cross-entropy peers")[1].split("## Worker loop")[0]
    for method in ("xlc chunked_softmax", "cce filter_eps='high'", "cce filter_eps=None", "liger fused linear CE"):
        assert peers.count(f"| {method} |") == 2
    assert "| chunked softmax step at 3,000 labels <= 27 ms |" in report and "MHP (2 and 3 heads) top-5" in report
    zero = report.split("## Worker loop under --local with DeepSpeed ZeRO 0/1/2/3")[1]
    assert zero.strip().startswith("skipped: ") or "| ZeRO stage |" in zero


def test_bf16_parameters_and_feature_gradients_are_measured():
    """grad_bytes = dW + db + dx in bf16: (C d + C + B d) x 2 bytes."""
    row = bench_one("chunked_softmax", 300, 8, 4, torch.device("cpu"), torch.bfloat16, 1, 5, {}, 2**30,
                    param_dtype=torch.bfloat16, features_grad=True)
    assert row["skipped"] is None and row["grad_bytes"] == (300 * 4 + 300 + 8 * 4) * 2


def test_peer_loss_check_and_targets(monkeypatch):
    """A stand-in peer (full-softmax CE over `x @ W.T`) agrees with xlc's loss; one that is off by 1% does not;
    both count in the targets table."""
    exact = lambda w, x, y: F.cross_entropy((x @ w.T).float(), y)  # noqa: E731
    monkeypatch.setattr(gpu_check, "peer_losses", lambda: {"exact": exact, "off": lambda w, x, y: 1.01 * exact(w, x, y),
                                                           "missing": "not importable (test)"})
    plan = dataclasses.replace(gpu_check.PLANS["cpu"], labels=(50,), target_labels=50)
    rows = gpu_check.bench_peers(plan, torch.device("cpu"), deadline=float("inf"))
    by = {r["method"]: r for r in rows}
    assert by["xlc chunked_softmax"]["rel_diff"] == 0 and by["exact"]["rel_diff"] < 1e-6
    assert abs(by["off"]["rel_diff"] - 0.01) < 1e-4 and by["missing"]["skipped"] == "not importable (test)"
    verdicts = {t: v for t, _, v in gpu_check.targets(plan, [], rows, tflops=1.0)}
    assert verdicts["chunked softmax at 50 labels faster than missing at equal or lower memory"] == "not measured"
    assert verdicts["chunked softmax at 50 labels faster than exact at equal or lower memory"] in ("met", "**missed**")
    text = gpu_check.report(plan, "cpu", gpu_check.environment(torch.device("cpu")), 1.0, [], rows, "test")
    assert "| off | 50 |" in text and "**differs**" in text and "skipped: test" in text
