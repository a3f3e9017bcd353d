"""Peer libraries as compare baselines (napkinXC PLT/BR/OVR, PECOS XR-Linear): they learn a tiny synthetic set,
the xlc metrics they report equal napkinXC's own on the same predictions, their MLflow runs sit beside knn's,
options are checked, and a missing library names the `peers` extra."""

from __future__ import annotations

import sys

import pytest
import torch
import yaml

from data_tools.builders import synthetic
from xlc import data as xdata
from xlc.baselines.peers import check_options, fit_predict, require, score
from xlc.errors import ConfigError
from xlc.eval import inv_propensity, precision_at_k

PEERS = {
    "napkinxc-plt": ("napkinxc", {"model": "PLT", "threads": 2}),
    "napkinxc-br": ("napkinxc", {"model": "BR", "threads": 2}),
    "napkinxc-ovr": ("napkinxc", {"model": "OVR", "threads": 2}),
    "pecos": ("pecos", {"nr_splits": 4, "max_leaf_size": 10, "threads": 2}),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """1,500 rows, 300 Zipf labels, ~2 a row; each label has 2 prototype features among 30 noise ones per row:
    learnable (the peers reach P@1 ~0.95) but not perfectly, so the metric cross-check sees misses."""
    out = tmp_path_factory.mktemp("peers") / "tiny"
    return str(synthetic.build(str(out), samples=1500, labels=300, labels_per_sample=2.0, features=1000,
                               proto_features_per_label=2, noise_features=30, seed=0))


@pytest.mark.parametrize("name", PEERS)
def test_peer_learns_and_its_xlc_metrics_equal_napkinxc(tiny, name):
    from napkinxc import metrics as nxc

    baseline, options = PEERS[name]
    run = fit_predict(baseline, tiny, options, k=5)
    metrics = score(run, tiny, ks=(1, 3, 5), psp_a=0.55, psp_b=1.5)

    # bound: a random ranking scores P@1 ~ 2/300; ranking the 5 most frequent training labels first, ~0.3
    counts = torch.from_numpy(xdata.label_counts(tiny))
    popular = counts.argsort(descending=True)[:5].expand(len(run.truth), 5)
    assert precision_at_k(popular, run.truth, 1) < 0.5
    assert metrics["p@1"] > 0.8, metrics
    assert ((run.pred >= -1) & (run.pred < 300)).all()
    assert metrics["train_seconds"] >= metrics["fit_seconds"] > 0 and metrics["predict_seconds"] > 0
    assert metrics["model_bytes"] > 1000

    y_true = [row[row >= 0].tolist() for row in run.truth]
    y_pred = [row[row >= 0].tolist() for row in run.pred]
    inv_ps = inv_propensity(counts, xdata.read_meta(tiny).num_train).numpy()
    for k in (1, 3, 5):
        assert metrics[f"p@{k}"] == pytest.approx(nxc.precision_at_k(y_true, y_pred, k=k)[k - 1], rel=1e-9)
        assert metrics[f"ndcg@{k}"] == pytest.approx(nxc.ndcg_at_k(y_true, y_pred, k=k)[k - 1], rel=1e-9)
        assert metrics[f"psp@{k}"] == pytest.approx(nxc.psprecision_at_k(y_true, y_pred, inv_ps, k=k)[k - 1], rel=1e-9)


def test_options_resolve_defaults_and_every_bad_key_is_named():
    assert check_options("napkinxc", {"model": "BR"})["liblinear_c"] == 10.0
    assert "arity" not in check_options("napkinxc", {"model": "BR"})  # a PLT option
    assert check_options("pecos", {"C": 2})["C"] == 2 and check_options("pecos", {})["nr_splits"] == 16
    with pytest.raises(ConfigError) as err:
        check_options("napkinxc", {"model": "XYZ", "arty": 3, "threads": "2", "max_leaves": 0})
    message = str(err.value)
    assert "options.model='XYZ': expected one of PLT, BR, OVR" in message
    assert "options.arty: not a napkinxc option; allowed: arity, ensemble," in message
    assert "options.threads='2': expected int" in message and "options.max_leaves=0: expected >= 1" in message
    with pytest.raises(ConfigError, match=r"options.arity: an option of model PLT only, not 'BR'"):
        check_options("napkinxc", {"model": "BR", "arity": 4})
    with pytest.raises(ConfigError, match=r"options.C=0: expected > 0; options.solver_type='svm': expected one of"):
        check_options("pecos", {"C": 0, "solver_type": "svm"})


def _compare_yaml(tmp_path, data: str, methods: list[dict]) -> str:
    spec = {"name": "peers", "base": {"name": "x", "data": data, "train": {"seed": 0},
                                      "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "peers"}},
            "methods": methods}
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


@pytest.mark.parametrize("module", ["napkinxc", "pecos"])
def test_missing_library_exits_2_naming_the_extra(tiny, tmp_path, module, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'xlc\[peers\]'"):
        require(module)
    from xlc.cli import main

    path = _compare_yaml(tmp_path, tiny, [{"name": "peer", "baseline": module}])
    with pytest.raises(SystemExit) as exit_:
        main(["compare", path, "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "pip install 'xlc[peers]'" in err, err


@pytest.mark.integration
def test_compare_logs_peer_runs_beside_knn(tiny, tmp_path):
    from mlflow.tracking import MlflowClient

    from xlc.compare import load_compare, run_compare
    from xlc.tracking import metric_name

    path = _compare_yaml(tmp_path, tiny, [
        {"name": "knn", "baseline": "knn", "options": {"k": 10}},
        {"name": "plt", "baseline": "napkinxc", "options": {"model": "PLT", "arity": 4, "threads": 2}},
        {"name": "xr", "baseline": "pecos", "options": {"nr_splits": 4, "threads": 2}},
    ])
    summary = run_compare(path, [], out_dir=tmp_path / "out")
    assert [r["method"] for r in summary["runs"]] == ["knn", "plt", "xr"]
    assert "predict s" in summary["table"] and "model MiB" in summary["table"]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("peers").experiment_id])}
    assert set(runs) == {"peers-knn", "peers-plt", "peers-xr", "peers"}  # "peers": the compare's parent run
    knn, plt, xr = runs["peers-knn"], runs["peers-plt"], runs["peers-xr"]
    assert set(plt.data.tags) >= set(knn.data.tags) and plt.data.tags["head"] == "napkinxc"
    assert plt.info.status == xr.info.status == knn.info.status == "FINISHED"
    for run in (knn, plt, xr):  # MLflow's system metrics, sampled while the baseline fitted and scored
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
    for run in (plt, xr):
        logged = {metric_name(k): v for k, v in run.data.metrics.items()}
        assert {"p@1", "ndcg@5", "psp@5", "train_seconds", "fit_seconds", "predict_seconds", "model_bytes"} <= set(logged)
        assert logged["p@1"] > 0.8
    assert plt.data.params["model"] == "PLT" and plt.data.params["arity"] == "4" and plt.data.params["liblinear_c"] == "10.0"
    assert plt.data.params["library"].startswith("napkinxc==") and xr.data.params["library"].startswith("libpecos==")
    assert xr.data.params["nr_splits"] == "4" and xr.data.params["beam_size"] == "10"

    bad = _compare_yaml(tmp_path, tiny, [{"name": "br", "baseline": "napkinxc", "options": {"model": "BR", "arity": 4}}])
    with pytest.raises(ConfigError, match=r"methods\[0\].options.arity: an option of model PLT only"):
        load_compare(bad, [])
