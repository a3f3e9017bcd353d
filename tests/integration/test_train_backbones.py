"""`xlc train` with the packaged MiniLM text encoder, frozen, for a few steps. XML-CNN trains in test_compare; a
text backbone on a dataset without text is a user error in test_train_cli."""

from __future__ import annotations

import pytest

from tests.helpers import last_json
from xlc.data import read_meta

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # ~40 s each on 2 cores: the slow stage


def test_minilm_frozen_runs_end_to_end(run_config, xlc_cli, icd10cm_small, tmp_path):
    config = run_config(data=str(icd10cm_small),
                        backbone={"name": "minilm", "hidden": [], "dropout": 0.0,
                                  "options": {"freeze": True, "max_length": 32}},
                        head={"name": "softmax"}, train={"max_steps": 3, "batch_size": 64}, eval={"max_rows": 256})
    proc = xlc_cli("train", str(config), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = last_json(proc.stdout)["metrics"]
    # no hidden widths: the head reads the 384-d sentence embedding
    assert metrics["head_parameters"] == read_meta(icd10cm_small).num_labels * (384 + 1)
    assert metrics["samples_per_second"] * metrics["train_seconds"] == pytest.approx(3 * 64 * 2)  # steps x batch x workers
    assert metrics["acc"] == pytest.approx(metrics["p@1"]) and metrics["p@1"] <= 5 * metrics["p@5"] + 1e-12
