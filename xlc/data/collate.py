"""Arrow rows -> torch tensors, built from the list offsets directly (no per-row Python loop)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import torch

from xlc.data.schema import FEAT_IDX, FEAT_VAL, IMAGE, LABELS, TEXT, as_array


@dataclass
class Batch:
    """One batch of B rows.

    `feat_idx`/`feat_offsets`/`feat_val` feed `nn.EmbeddingBag(mode="sum")(feat_idx, feat_offsets,
    per_sample_weights=feat_val)`; they are None for text-only sets. `targets` is Long [B] (single-label: the
    first label, -1 for a row without labels) or Long [B, M] padded with -1 (multi-label, M >= 1). `image` is
    uint8 [B, H * W * C], each row's pixels as stored (row-major H x W x C; the shape is meta.json's `image`,
    which the image backbone is built with).
    """

    targets: torch.Tensor  # [B] or [B, M]
    feat_idx: torch.Tensor | None = None  # [nnz] long
    feat_offsets: torch.Tensor | None = None  # [B] long, start of each row in feat_idx
    feat_val: torch.Tensor | None = None  # [nnz] float
    text: list[str] | None = None
    image: torch.Tensor | None = None  # [B, H * W * C] uint8

    def __len__(self) -> int:
        return self.targets.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        moved = {
            f.name: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return Batch(**moved)


def list_parts(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [B+1] starting at 0, values [nnz]) of a list column, zero-copy where Arrow allows."""
    arr = as_array(col)
    offsets = arr.offsets.to_numpy()  # [B+1], absolute into arr.values (a sliced array starts past 0)
    values = arr.values.slice(offsets[0], offsets[-1] - offsets[0]).to_numpy(zero_copy_only=False)
    return offsets - offsets[0], values


def padded_targets(offsets: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Ragged label lists -> int64 [B, M] padded with -1, M = max(1, longest row)."""
    lengths = np.diff(offsets)  # [B]
    width = max(1, int(lengths.max(initial=0)))
    out = np.full((len(lengths), width), -1, dtype=np.int64)  # [B, M]
    rows = np.repeat(np.arange(len(lengths)), lengths)  # [nnz]
    cols = np.arange(len(values)) - np.repeat(offsets[:-1], lengths)  # [nnz] position within the row
    out[rows, cols] = values
    return out


def first_targets(offsets: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Ragged label lists -> int64 [B]: each row's first label, -1 where a row has none."""
    has = np.diff(offsets) > 0  # [B]
    out = np.full(len(has), -1, dtype=np.int64)
    out[has] = values[offsets[:-1][has]]
    return out


def collate(table: pa.Table | pa.RecordBatch, multi_label: bool) -> Batch:
    """Build a `Batch` from rows with the dataset schema; absent feature/text columns give None fields."""
    names = table.schema.names
    offsets, labels = list_parts(table.column(LABELS))
    targets = padded_targets(offsets, labels) if multi_label else first_targets(offsets, labels)
    batch = Batch(targets=torch.from_numpy(targets))
    if FEAT_IDX in names:
        f_offsets, f_idx = list_parts(table.column(FEAT_IDX))
        batch.feat_idx = torch.from_numpy(f_idx.astype(np.int64))  # [nnz]
        batch.feat_offsets = torch.from_numpy(f_offsets[:-1].astype(np.int64))  # [B]
        if FEAT_VAL in names:
            _, f_val = list_parts(table.column(FEAT_VAL))
            batch.feat_val = torch.from_numpy(np.array(f_val, dtype=np.float32))  # [nnz], copied: Arrow is read-only
        else:  # a bare index list means value 1
            batch.feat_val = torch.ones(len(f_idx), dtype=torch.float32)
    if TEXT in names:
        batch.text = as_array(table.column(TEXT)).to_pylist()
    if IMAGE in names:
        batch.image = torch.from_numpy(image_rows(table.column(IMAGE)))
    return batch


def image_rows(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A binary column of equal-length values (validated by `validate_table`) -> uint8 [B, bytes], one copy."""
    arr = as_array(col)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset: arr.offset + len(arr) + 1]  # [B+1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0]: offsets[-1]]  # [B * bytes]
    # copied: Arrow's buffers are read-only
    return data.reshape(len(arr), -1).copy() if len(arr) else np.zeros((0, 0), dtype=np.uint8)
