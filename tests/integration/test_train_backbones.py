"""`xlc train` with the text backbones: XML-CNN over hashed words, and the packaged MiniLM (frozen, a few steps)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration


def test_xmlcnn_learns_from_text(run_config, xlc_cli, tmp_path):
    config = run_config(backbone={"name": "xmlcnn", "hidden": [128], "dropout": 0.1,
                                  "options": {"buckets": 65536, "embed_dim": 64, "filters": 64}},
                        head={"name": "softmax"}, train={"epochs": 2})
    proc = xlc_cli("train", str(config), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])["metrics"]
    assert metrics["p@1"] > 0.05  # 1,918 labels: chance is 0.0005


def test_minilm_frozen_runs_end_to_end(run_config, xlc_cli, tmp_path):
    config = run_config(backbone={"name": "minilm", "hidden": [], "dropout": 0.0,
                                  "options": {"freeze": True, "max_length": 32}},
                        head={"name": "softmax"}, train={"max_steps": 3, "batch_size": 64}, eval={"max_rows": 256})
    proc = xlc_cli("train", str(config), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])["metrics"]
    assert 0 <= metrics["p@1"] <= 1 and metrics["samples_per_second"] > 0
    assert metrics["head_parameters"] == 1918 * (384 + 1)  # no hidden widths: the 384-d sentence embedding


def test_text_backbone_on_a_dataset_without_text_exits_2(run_config, xlc_cli, tmp_path):
    from data_tools.builders import synthetic

    data = synthetic.build(str(tmp_path / "synthetic"), samples=50, labels=20)
    config = run_config(data=str(data), backbone={"name": "xmlcnn", "hidden": [16]})
    proc = xlc_cli("train", str(config), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "backbone.name='xmlcnn' needs a dataset with a text column (meta.json text: true)" in proc.stderr
    assert "Traceback" not in proc.stderr
