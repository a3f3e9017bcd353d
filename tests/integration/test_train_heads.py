"""`xlc train` with a label-sharded head (outside DeepSpeed's averaging), then `xlc eval` and `xlc bench ann` on its
checkpoint. The FAISS label-tree head trains in test_compare."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.helpers import last_json
from xlc.data import iter_batches, read_meta

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # ~40 s each on 2 cores: the slow stage


def test_sharded_softmax_trains_and_evaluates_offline(run_config, xlc_cli, xlc_main, synthetic_data, learned_p1,
                                                      tmp_path):
    meta = read_meta(synthetic_data)
    config = run_config(head={"name": "sharded_softmax"}, eval={"collapse": True}, train={"epochs": 2})
    proc = xlc_cli("train", str(config), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = last_json(proc.stdout)
    assert result["metrics"]["p@1"] > learned_p1
    assert result["metrics"]["head_parameters"] == meta.num_labels * (128 + 1)  # both shards counted once

    # NC metrics at each evaluation (one per epoch); the last ones equal NC recomputed in this process from the
    # reassembled checkpoint: each rank streamed its share of the rows and the class sums were all-reduced
    from xlc.eval.collapse import NCAccumulator
    from xlc.train.offline import checkpoint_of, load_checkpoint

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = result["run_id"]
    assert len(client.get_metric_history(run_id, "nc/nc1")) == 2
    logged = client.get_run(run_id).data.metrics
    with checkpoint_of(run_id, uri) as directory:
        model, head, _, _ = load_checkpoint(directory)
    nc = NCAccumulator(meta.num_labels, head.in_dim)
    with torch.no_grad():
        for batch in iter_batches(synthetic_data, "train", 256):
            nc.update(model(batch).double(), batch.targets)
    expected = nc.compute()  # no classifier rows for a sharded head: NC1 and the NC2 forms over class means
    assert {f"nc/{k}" for k in expected} == {k for k in logged if k.startswith("nc/")} and "nc1" in expected
    for key, value in expected.items():
        assert logged[f"nc/{key}"] == pytest.approx(value, rel=1e-5), key

    # One process, world size 1: the 2 saved shards are reassembled and score exactly as in training.
    status, out, err = xlc_main("eval", run_id, "--uri", uri, "--json")
    assert status == 0, err
    metrics = last_json(out)["metrics"]
    for key in ("p@1", "p@5", "ndcg@5", "psp@5"):
        assert metrics[key] == pytest.approx(result["metrics"][key], abs=1e-9), key

    # ANN (FAISS HNSW over the reassembled classifier rows) against exact top-k on the whole test split.
    status, out, err = xlc_main("bench", "ann", run_id, "--uri", uri, "--json")
    assert status == 0, err
    report = last_json(out)
    assert report["queries"] == meta.num_test and report["labels"] == meta.num_labels
    assert report["p@5 exact"] == pytest.approx(result["metrics"]["p@5"], abs=1e-9)
    assert 0.5 < report["recall@5"] and report["p@5 ann"] <= report["p@5 exact"] + 0.02
