"""Where `xlc train` resumes from: the newest checkpoint of the run directory that verifies, whether or not Ray
recorded it; what pruning keeps. Checkpoints here are state.json + manifests, all a resume point needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xlc.train import checkpoint as ckpt
from xlc.train.driver import RAY_SNAPSHOT, prune_unrecorded, recorded_by_ray, resume_point


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
        assert resume_point(run) == orphan  # written, then the run stopped before Ray recorded it
    assert recorded_by_ray(run) == {recorded_old.name, recorded.name}

    prune_unrecorded(run, keep=1, resume=orphan)  # Ray prunes what it recorded; the resume point stays
    assert ckpt.checkpoint_dirs(run) == [recorded_old, recorded, orphan, half_written]
    prune_unrecorded(run, keep=1)
    assert ckpt.checkpoint_dirs(run) == [recorded_old, recorded, half_written]
    assert resume_point(tmp_path / "new") is None
