"""`data_order: exact`: each rank's batches are a function of (seed, epoch, rank, world), cover the epoch's rows
once, and every rank takes as many steps (the last, partial round split evenly)."""

from __future__ import annotations

import pytest

from data_tools.builders import synthetic
from xlc.config import from_dict
from xlc.train.driver import exact_epoch


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    # about 400 train rows: batches of 32 leave a partial round on 1, 2 and 3 ranks
    return synthetic.build(str(tmp_path_factory.mktemp("data") / "syn"), samples=500, labels=20, features=64)


def _rows(cfg, rank, world, epoch, drop_last=False) -> list[list[int]]:
    """Each batch as the list of its rows, a row named by its features (unique per synthetic row)."""
    return [[tuple(f) for f in t.column("feat_idx").to_pylist()]
            for t in exact_epoch(cfg, rank, world, epoch, drop_last)]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_cover_the_epoch_once_in_equal_steps(dataset, world):
    cfg = from_dict({"name": "t", "data": str(dataset), "train": {"batch_size": 32, "seed": 7}})
    per_rank = [_rows(cfg, r, world, epoch=0) for r in range(world)]
    assert len({len(batches) for batches in per_rank}) == 1  # as many steps on every rank
    seen = [row for batches in per_rank for batch in batches for row in batch]
    whole = [row for batch in _rows(cfg, 0, 1, epoch=0) for row in batch]
    assert sorted(seen) == sorted(whole) and len(set(whole)) == len(whole)  # every row once
    last = [batches[-1] for batches in per_rank]
    assert max(map(len, last)) - min(map(len, last)) <= 1  # the partial round split evenly
    assert all(len(b) == 32 for batches in per_rank for b in batches[:-1])

    assert per_rank[0] == _rows(cfg, 0, world, epoch=0)  # the same again: a function of its arguments
    assert per_rank[0] != _rows(cfg, 0, world, epoch=1)  # each epoch its own order
    dropped = [_rows(cfg, r, world, epoch=0, drop_last=True) for r in range(world)]
    assert all(len(b) == 32 for batches in dropped for b in batches)
    assert len({len(batches) for batches in dropped}) == 1
