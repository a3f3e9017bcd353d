"""`xlc.tracking`: MLflow's conventions on every run (experiment kind, source tags, dataset input, nesting, resume)."""

from __future__ import annotations

import json

import pytest

from xlc import tracking


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    """One SQLite store for the module (creating one takes seconds); each test uses its own experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_runs_follow_mlflow_conventions_and_record_changed_params_on_resume(uri, tmp_path):
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


def test_a_run_ends_killed_on_an_interrupt_failed_on_an_error_and_fresh_starts_another(uri):
    client = tracking.client(uri)
    first, _ = tracking.start_run(uri, "ending", "r", {}, {})
    with pytest.raises(KeyboardInterrupt), tracking.ending(uri, first):  # SIGINT, and SIGTERM as `xlc train` raises it
        raise KeyboardInterrupt
    assert client.get_run(first).info.status == "KILLED"
    again, resumed = tracking.start_run(uri, "ending", "r", {}, {})
    with pytest.raises(RuntimeError), tracking.ending(uri, again):
        raise RuntimeError("a bug")
    assert (again, resumed, client.get_run(first).info.status) == (first, True, "FAILED")
    fresh, fresh_resumed = tracking.start_run(uri, "ending", "r", {}, {}, fresh=True)  # `xlc train --restart`
    with tracking.ending(uri, fresh):
        pass
    assert fresh != first and not fresh_resumed and client.get_run(fresh).info.status == "FINISHED"
    assert tracking.find_run(uri, "ending", "r").info.run_id == fresh  # the next resume continues the new run
