"""`xlc train` with `data: s3://...` and `storage.path: s3://...` against moto's S3 server on 127.0.0.1 (started and
stopped by the `s3` fixture): Ray Data and the workers read the dataset from the bucket, Ray Train writes the
checkpoints there; the rerun skips a newest checkpoint altered in the bucket (same size: only its checksums tell)
for the one before it and trains to the end of the epoch; `xlc eval RUN_ID` reads the final checkpoint from the
bucket; every checkpoint corrupt exits 2 (from the workers when only checksums tell, else before Ray starts);
`--local` refuses the object store.

Each `xlc train` starts a Ray of its own: its workers inherit the S3 credentials the fixture put in the environment
(the session's shared Ray was started without them)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import last_json
from xlc.data import open_location
from xlc.train import checkpoint as ckpt

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_train_on_s3_falls_back_past_a_corrupt_checkpoint_and_resumes(s3, synthetic_data, run_config, xlc_cli,
                                                                      xlc_main, learned_p1, tmp_path):
    storage = s3.uri("checkpoints")
    config = run_config(data=s3.upload(synthetic_data, "data/synthetic"), storage={"path": storage},
                        train={"max_steps": 12, "checkpoint_every_steps": 5})
    # 25 steps make the epoch (3,182 rows on 2 workers, 64 a batch); the first run stops at step 12, reading
    # through Ray Data (data_order stream); checkpoints at steps 5, 10 and 12 (the epoch's end), Ray keeps 2
    first = xlc_cli("train", str(config), "train.data_order=stream", "--json", cwd=tmp_path, own_ray=True)
    assert first.returncode == 0, first.stderr[-4000:]
    run = open_location(storage) / "it"
    previous, newest = ckpt.checkpoint_dirs(run)
    assert [ckpt.read_state(c)["step"] for c in (previous, newest)] == [10, 12]
    state = newest / ckpt.STATE_FILE
    with run.fs.open_output_stream(state.path) as f:
        f.write(state.read_bytes().replace(b'"step": 12', b'"step": 99'))

    second = xlc_cli("train", str(config), "train.max_steps=null", "--json", cwd=tmp_path, own_ray=True)
    assert second.returncode == 0, second.stderr[-4000:]
    assert (f"checkpoint {newest} is corrupt ({state}: checksum mismatch); resuming from {previous}"
            in second.stderr), second.stderr[-4000:]
    run_id, metrics = last_json(first.stdout)["run_id"], last_json(second.stdout)["metrics"]
    assert last_json(second.stdout)["run_id"] == run_id and metrics["p@1"] > learned_p1
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    assert client.get_run(run_id).data.tags["resumed_from_step"] == "10"
    assert [m.step for m in client.get_metric_history(run_id, "p_at_1")] == [12, 25]
    assert ckpt.read_state(ckpt.newest_valid(run))["step"] == 25

    status, out, err = xlc_main("eval", run_id, "--uri", uri, "--json")
    assert status == 0, err[-4000:]
    assert abs(last_json(out)["metrics"]["p@1"] - metrics["p@1"]) <= 0.01  # one process against two workers

    # every checkpoint altered in place: the listing passes them, each worker's downloads fail their checksums
    checkpoints = ckpt.checkpoint_dirs(run)
    for checkpoint in checkpoints:
        state = checkpoint / ckpt.STATE_FILE
        with run.fs.open_output_stream(state.path) as f:
            f.write(state.read_bytes().replace(b'"step": 25', b'"step": 77'))
    third = xlc_cli("train", str(config), cwd=tmp_path, own_ray=True)
    assert (third.returncode, third.stderr.splitlines()[-1]) == (
        2, f"error: all {len(checkpoints)} checkpoints under {run} fail verification: {state}: checksum mismatch; "
           "rerun with --restart to start from step 0"), third.stderr[-4000:]
    # checkpoints cut short: the listing tells, before Ray starts
    for checkpoint in checkpoints:
        run.fs.delete_file((checkpoint / "manifest_0.json").path)
    assert xlc_main("train", str(config)) == (
        2, "", f"error: all {len(checkpoints)} checkpoints under {run} fail verification: {checkpoints[-1]}: no "
               "manifest_0.json (checkpoint incomplete); rerun with --restart to start from step 0\n")
    assert xlc_main("train", str(config), "--local") == (
        2, "", f"error: storage.path={storage!r}: --local writes checkpoints to a filesystem path (local or shared); "
               "give one, or train without --local (Ray Train uploads them to object storage)\n")
