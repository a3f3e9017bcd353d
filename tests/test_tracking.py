"""`xlc.tracking`: MLflow's conventions on every run (experiment kind, source tags, dataset input, nesting, resume)."""

from __future__ import annotations

import json

from xlc import tracking


def test_runs_follow_mlflow_conventions_and_record_changed_params_on_resume(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "meta.json").write_text(json.dumps({"name": "tiny", "num_labels": 7, "multi_label": False}))
    (data / "train" / "part-0.parquet").write_bytes(b"x" * 10)

    parent, _ = tracking.start_run(uri, "exp", "cmp", {}, {"kind": "compare"})
    run_id, resumed = tracking.start_run(uri, "exp", "cmp-a", {"lr": "0.1"}, {"head": "mhp"},
                                         parent_run_id=parent, description="mhp on tiny")
    tracking.log_dataset(uri, run_id, data)
    again, resumed_again = tracking.start_run(uri, "exp", "cmp-a", {"lr": "0.2", "epochs": "3"}, {"head": "mhp"})

    client = tracking.client(uri)
    run = client.get_run(run_id)
    assert (resumed, resumed_again, again) == (False, True, run_id)
    assert run.data.params == {"lr": "0.1", "epochs": "3"}  # params are immutable: the change is a tag
    assert run.data.tags["changed_on_resume.lr"] == "0.1 -> 0.2"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["mlflow.note.content"] == "mhp on tiny"
    assert run.data.tags["mlflow.source.git.commit"] == tracking.git_commit()
    (dataset,) = [d.dataset for d in run.inputs.dataset_inputs]
    assert dataset.name == "tiny" and json.loads(dataset.source)["uri"] == str(data.resolve())
    assert json.loads(dataset.profile)["num_labels"] == 7
    experiment = client.get_experiment_by_name("exp")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not MLflow 3's GenAI view
