"""Where `xlc train` resumes from: the newest checkpoint of the run directory that verifies, whether or not Ray
recorded it, on the local filesystem or an object store (moto's S3 server); what pruning keeps. Checkpoints here
are state.json + manifests, all a resume point needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xlc.data import open_location
from xlc.errors import DataError
from xlc.train import checkpoint as ckpt
from xlc.train.driver import RAY_SNAPSHOT, prune_unrecorded, recorded_by_ray, restored, resume_point


def _checkpoint(run: Path, second: int, manifests: int = 1) -> Path:
    """A checkpoint named as Ray names them (by time), written by rank 0 of `manifests` ranks."""
    directory = run / f"checkpoint_2030-01-01_00-00-{second:02d}.000000"
    directory.mkdir(parents=True)
    ckpt.write_manifest(directory, 0, [ckpt.write_state(directory, {"step": second, "manifests": manifests})])
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
