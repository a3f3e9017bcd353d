"""collate against a plain per-row reference; sliced and chunked Arrow inputs."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from tests.helpers import assert_close
from xlc.data import collate


def _table(rows, text=False):
    return pa.table({
        "labels": pa.array([r[0] for r in rows], pa.list_(pa.int32())),
        "feat_idx": pa.array([r[1] for r in rows], pa.list_(pa.int32())),
        "feat_val": pa.array([r[2] for r in rows], pa.list_(pa.float32())),
        **({"text": pa.array([f"t{i}" for i in range(len(rows))])} if text else {}),
    })


def _reference(rows, multi_label):
    """Per-row loops: targets padded with -1 to the longest row (>= 1); features concatenated."""
    width = max(1, max(len(r[0]) for r in rows))
    if multi_label:
        targets = torch.tensor([r[0] + [-1] * (width - len(r[0])) for r in rows], dtype=torch.long)
    else:
        targets = torch.tensor([r[0][0] if r[0] else -1 for r in rows], dtype=torch.long)
    idx = torch.tensor([i for r in rows for i in r[1]], dtype=torch.long)
    val = torch.tensor([v for r in rows for v in r[2]], dtype=torch.float32)
    offsets = torch.tensor(np.cumsum([0] + [len(r[1]) for r in rows[:-1]]), dtype=torch.long)
    return targets, idx, val, offsets


@pytest.mark.parametrize("multi_label", [True, False])
@pytest.mark.parametrize("slice_start", [0, 7])
def test_collate_matches_per_row_reference(multi_label, slice_start, random_rows):
    rows = random_rows(60, num_labels=30, num_features=50, max_labels=4, seed=1)
    table = pa.concat_tables([_table(rows[:25], text=True), _table(rows[25:], text=True)])  # two chunks
    table = table.slice(slice_start, 40)  # offsets no longer start at 0
    rows = rows[slice_start:slice_start + 40]
    batch = collate(table, multi_label)
    targets, idx, val, offsets = _reference(rows, multi_label)
    assert len(batch) == 40
    assert torch.equal(batch.targets, targets)
    assert torch.equal(batch.feat_idx, idx) and batch.feat_idx.dtype == torch.long
    assert torch.equal(batch.feat_offsets, offsets)
    assert_close(batch.feat_val, val)
    assert batch.text == [f"t{g if g < 25 else g - 25}" for g in range(slice_start, slice_start + 40)]


def test_collate_record_batch_and_embedding_bag():
    rows = [([3, 1], [0, 2], [0.5, 2.0]), ([], [], []), ([2], [1], [1.0])]
    batch = collate(_table(rows).to_batches()[0], multi_label=True)
    assert batch.targets.tolist() == [[3, 1], [-1, -1], [2, -1]]
    bag = torch.nn.EmbeddingBag(3, 1, mode="sum")
    bag.weight.data = torch.tensor([[1.0], [10.0], [100.0]])
    out = bag(batch.feat_idx, batch.feat_offsets, per_sample_weights=batch.feat_val)
    assert_close(out.squeeze(1), torch.tensor([0.5 + 200.0, 0.0, 10.0]))
    assert batch.text is None


def test_collate_all_rows_unlabelled_gives_width_one():
    rows = [([], [1], [1.0]), ([], [], [])]
    assert collate(_table(rows), multi_label=True).targets.tolist() == [[-1], [-1]]
    assert collate(_table(rows), multi_label=False).targets.tolist() == [-1, -1]


def test_batch_to_keeps_fields():
    batch = collate(_table([([1], [0], [1.0])], text=True), multi_label=False).to("cpu")
    assert batch.text == ["t0"] and batch.feat_val.dtype == torch.float32
