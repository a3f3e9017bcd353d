"""`xlc repro NAME --size tiny`: each experiment runs in this process, prints its table as JSON, logs the run
(table.json, table.md, figures) to MLflow `repro-NAME`, and shows the paper's effect where tiny can show it."""

from __future__ import annotations

import json

import pytest

from xlc import tracking
from xlc.cli import main


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("repro-data")  # ICD-10-CM builds shared by the tests below


def repro(name: str, tmp_path, cache, capsys) -> dict:
    """Run `xlc repro NAME --size tiny --json`; check its MLflow run; return the rows by their first column(s)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    main(["repro", name, "--size", "tiny", "--json", "--uri", uri, "--data-cache", str(cache)])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = tracking.client(uri).get_run(out["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["size"] == "tiny"
    assert tracking.client(uri).get_experiment(run.info.experiment_id).name == f"repro-{name}"
    logged = {a.path for a in tracking.client(uri).list_artifacts(out["run_id"])}
    figures = {a.path for a in tracking.client(uri).list_artifacts(out["run_id"], "figures")}
    assert {"table.json", "table.md"} <= logged and figures == {f"figures/{f}" for f in out["figures"]} != set()
    return out


def test_theorem3_rank1_fits_under_ce_with_bias_only(tmp_path, capsys, cache):
    out = repro("theorem3", tmp_path, cache, capsys)
    row = {(r["variant"], r["r"]): r for r in out["rows"]}
    n = out["params"]["N"]
    ce_bias, no_bias, mse = row["CE + bias", 1], row["CE, no bias", 1], row["MSE + bias", 1]
    assert ce_bias["train acc"] >= 0.8 and mse["train acc"] <= 0.15  # tiny, seeded: 0.85 and 0.10 (= 2/N)
    assert no_bias["train acc"] <= 2 / n + 1e-6  # z_c = a_c s: only the largest and smallest a_c can win
    assert ce_bias["rank softmax(O)"] > 2 * mse["rank softmax(O)"]
    assert row["CE + bias", 2]["train acc"] == 1.0


def test_collapse_nc1_falls_in_the_terminal_phase(tmp_path, capsys, cache):
    out = repro("collapse", tmp_path, cache, capsys)
    rows = {r["head"]: r for r in out["rows"]}
    assert set(rows) == {"softmax", "etf", "mhp"}
    for row in rows.values():
        assert row["train acc"] == 1.0 and row["nc1"] < row["nc1 first"] / 2
    assert rows["etf"]["nc2_maxangle_w"] < 1e-6 and rows["mhp"]["nc3"] == "n/a"


@pytest.mark.slow
@pytest.mark.integration
def test_decomposition_one_row_per_ordering_above_chance(tmp_path, capsys, cache):
    out = repro("decomposition", tmp_path, cache, capsys)
    icd = [r for r in out["rows"] if r["dataset"] == "icd10cm"]
    assert sorted((r["head"], r["ordering"]) for r in icd if r["head"] != "softmax") == sorted(
        (h, o) for h in ("mhp", "mhc") for o in ("data", "random", "clustered"))
    assert all(r["p@1"] > 3 / r["labels"] for r in out["rows"])
    assert {r["ordering"] for r in out["rows"] if r["dataset"] != "icd10cm" and r["head"] == "mhc"} == {
        "data", "random", "clustered"}


@pytest.mark.slow
@pytest.mark.integration
def test_rank_every_family_and_rank(tmp_path, capsys, cache):
    out = repro("rank", tmp_path, cache, capsys)
    rows = {(r["head"], r["rank"]): r["p@1"] for r in out["rows"]}
    assert set(rows) == {("softmax", "full")} | {(h, g) for h in ("mhp mixture", "mhp cp (Eq. 16)", "lowrank ce")
                                                 for g in (1, 4)}
    assert rows["lowrank ce", 4] > rows["lowrank ce", 1]


@pytest.mark.slow
@pytest.mark.integration
def test_substructure_learns_super_classes_and_scores_sub_labels(tmp_path, capsys, cache):
    out = repro("substructure", tmp_path, cache, capsys)
    category = [r for r in out["rows"] if r["merge"] == "category"]
    assert category[0]["epoch"] == 0 and category[-1]["super train acc"] > category[0]["super train acc"] + 0.5
    assert all(-1 <= r["ari"] <= 1 and 0 <= r["probe"] <= 1 for r in out["rows"])


def test_unknown_experiment_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["repro", "nope", "--size", "tiny"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("error: repro 'nope': expected one of theorem3, collapse, decomposition, "
                                       "rank, substructure\n")
