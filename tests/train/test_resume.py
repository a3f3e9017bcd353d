"""Where `xlc train` resumes from: the newest checkpoint of the run directory that verifies, whether or not Ray
recorded it, on the local filesystem or an object store (moto's S3 server); what pruning keeps, and
`storage.keep_best`'s copy of the best checkpoint. Checkpoints here are state.json + manifests, all a resume
point needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xlc.data import open_location
from xlc.errors import DataError
from xlc.train import checkpoint as ckpt
from xlc.train.driver import RAY_SNAPSHOT, prune_unrecorded, recorded_by_ray, restored, resume_point


def _checkpoint(run: Path, second: int, manifests: int = 1, metrics: dict | None = None) -> Path:
    """A checkpoint named as Ray names them (by time), written by rank 0 of `manifests` ranks, with the metrics
    reported with it."""
    directory = run / f"checkpoint_2030-01-01_00-00-{second:02d}.000000"
    directory.mkdir(parents=True)
    state = {"step": second, "manifests": manifests, "metrics": metrics or {"step": second}}
    ckpt.write_manifest(directory, 0, [ckpt.write_state(directory, state)])
    return directory


def test_newest_verified_checkpoint_whether_ray_recorded_it_or_not_and_pruning(tmp_path):
    run = tmp_path / "run"
    recorded_old, orphan_old, recorded, orphan = (_checkpoint(run, s) for s in (1, 2, 3, 4))
    half_written = _checkpoint(run, 5, manifests=2)  # rank 1 stopped before its files and manifest
    (run / RAY_SNAPSHOT).write_text(json.dumps({"checkpoint_results": [
        {"checkpoint_dir_name": d.name} for d in (recorded_old, recorded)]}))

    with pytest.warns(UserWarning, match=f"{half_written}: no manifest_1.json \\(rank 1 did not finish writing\\)"):
        resume = resume_point(run)
    assert Path(resume) == orphan  # written, then the run stopped before Ray recorded it
    assert recorded_by_ray(run) == {recorded_old.name, recorded.name}

    prune_unrecorded(run, keep=1, resume=resume)  # Ray prunes what it recorded; the resume point stays
    assert [Path(c) for c in ckpt.checkpoint_dirs(run)] == [recorded_old, recorded, orphan, half_written]
    prune_unrecorded(run, keep=1)
    assert [Path(c) for c in ckpt.checkpoint_dirs(run)] == [recorded_old, recorded, half_written]
    assert resume_point(tmp_path / "new") is None


def test_on_an_object_store_the_listing_chooses_and_only_the_chosen_checkpoint_is_downloaded(s3, tmp_path):
    """Listing and sizes pick a candidate where it lies; its checksums are checked on the one download, so a file
    altered in place (same size) sends the resume to the next older checkpoint."""
    for second in (1, 2, 3):
        _checkpoint(tmp_path / "run", second)
    run = open_location(s3.upload(tmp_path / "run", "checkpoints/run"))
    old, previous, newest = ckpt.checkpoint_dirs(run)
    assert [c.name for c in (old, previous, newest)] == sorted(p.name for p in (tmp_path / "run").iterdir())
    state = newest / ckpt.STATE_FILE
    with run.fs.open_output_stream(state.path) as f:  # same size, another step: only the checksum tells
        f.write(state.read_bytes().replace(b'"step": 3', b'"step": 9'))

    assert resume_point(run) == newest  # the listing cannot tell
    with pytest.warns(UserWarning, match=f"checkpoint {newest} is corrupt \\({state}: checksum mismatch\\); "
                                         f"resuming from {previous}"):
        with restored(run) as found:
            assert found.name == previous.name and ckpt.read_state(found)["step"] == 2
    assert not found.exists()  # the download lived as long as the resume needed it

    for checkpoint in (old, previous):
        run.fs.delete_file((checkpoint / "manifest_0.json").path)
    with pytest.raises(DataError, match=f"^all 3 checkpoints under {run} fail verification: {state}: checksum "
                                        "mismatch; rerun with --restart to start from step 0$"):
        with restored(run):
            pass
    prune_unrecorded(run, keep=1)  # Ray recorded none of them
    assert ckpt.checkpoint_dirs(run) == [newest]


@pytest.mark.parametrize(("value", "best", "order", "beats"), [
    (None, None, "max", False),  # a checkpoint without the metric (written between evaluations) never competes
    (float("nan"), None, "max", False),
    (0.3, None, "max", True),  # the first evaluated checkpoint is the best so far
    (0.5, 0.5, "max", False),  # a tie keeps the first to reach the value
    (0.6, 0.5, "max", True), (0.4, 0.5, "max", False),
    (0.4, 0.5, "min", True), (0.6, 0.5, "min", False),
])
def test_what_beats_the_kept_best(value, best, order, beats):
    assert ckpt.beats(value, best, order) is beats


def test_the_newest_checkpoints_and_a_linked_copy_of_the_best_are_kept(tmp_path):
    """As a run checkpoints (every step, evaluating every other), `storage.keep: 2` and `keep_best: p@1`."""
    run = tmp_path / "run"
    scores = [None, 0.3, None, 0.5, None, 0.4, None, 0.5]  # the second 0.5 ties: the first keeps its place
    written = []
    for second, score in enumerate(scores):
        written.append(_checkpoint(run, second, metrics=None if score is None else {"p@1": score, "step": second}))
        ckpt.keep_best(written[-1], "p@1", "max")
        ckpt.prune(run, keep=2)
    (best,) = ckpt.best_dirs(run)
    assert best.name == f"best_{written[3].name}" and ckpt.verify(best) == []
    kept = [Path(c) for c in ckpt.checkpoint_dirs(run)]
    assert kept == written[-2:] and Path(resume_point(run)) == written[-1]  # a copy, no resume point
    assert not list(run.glob(".*"))  # no temporary copy left

    ckpt.keep_best(_checkpoint(run, 9, metrics={"p@1": 0.9}), "p@1", "max")
    (best,) = ckpt.best_dirs(run)  # replaced, the older copy deleted
    assert best.name == f"best_{ckpt.checkpoint_dirs(run)[-1].name}"
    state = Path(ckpt.checkpoint_dirs(run)[-1]) / ckpt.STATE_FILE
    assert (best / ckpt.STATE_FILE).stat().st_ino == state.stat().st_ino  # a hard link: no second copy on disk
