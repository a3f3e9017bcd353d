"""The dataset directory contract: `meta.json`, the Parquet row schema, and validation whose errors name file and row.

```
DIR/meta.json          DatasetMeta as JSON
DIR/labels.parquet     label_id int32, name string, train_count int64
DIR/train/*.parquet    labels list<int32>; feat_idx list<int32> + feat_val list<float32>, text string and/or
                       image binary (H x W x C uint8 pixels, row-major; the shape is meta.json's `image`)
DIR/test/*.parquet     same schema
DIR/samples.png        optional: a grid of sample images (image sets), logged with each training run
```
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xlc.data.location import Location, open_location
from xlc.errors import DataError

META_FILE = "meta.json"
LABELS_FILE = "labels.parquet"
SAMPLES_FILE = "samples.png"
SPLITS = ("train", "test")

LABELS = "labels"
FEAT_IDX = "feat_idx"
FEAT_VAL = "feat_val"
TEXT = "text"
IMAGE = "image"
IMAGE_KEYS = ("height", "width", "channels")

INDEX_LIST = pa.list_(pa.int32())
VALUE_LIST = pa.list_(pa.float32())
LABELS_SCHEMA = pa.schema([("label_id", pa.int32()), ("name", pa.string()), ("train_count", pa.int64())])


def row_schema(sparse: bool, text: bool, image: bool = False) -> pa.Schema:
    """The schema of a split file: labels, then the sparse feature pair, the text column and/or the image column."""
    fields = [(LABELS, INDEX_LIST)]
    if sparse:
        fields += [(FEAT_IDX, INDEX_LIST), (FEAT_VAL, VALUE_LIST)]
    if text:
        fields.append((TEXT, pa.string()))
    if image:
        fields.append((IMAGE, pa.binary()))
    return pa.schema(fields)


@dataclass
class DatasetMeta:
    """Contents of `DIR/meta.json`.

    `num_features` is the sparse feature dimension (None for text-only sets); `text` says a raw `text` column
    exists. A set may have both (e.g. icd10cm keeps its text next to the tf-idf features). `image`
    ({"height", "width", "channels"}) says an `image` column holds each row's pixels as that many uint8 bytes,
    row-major H x W x C (grey: C = 1).
    """

    name: str
    num_labels: int
    multi_label: bool
    num_features: int | None = None
    text: bool = False
    source: str = ""
    created_by: str = ""
    num_train: int | None = None
    num_test: int | None = None
    image: dict | None = None
    # extra files in the directory (e.g. {"vocabulary": "vocab.parquet"}) and the builder's options
    files: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    @property
    def sparse(self) -> bool:
        return self.num_features is not None

    @property
    def image_bytes(self) -> int:
        """Bytes of one row's image (H * W * C); 0 for a set without images."""
        return self.image["height"] * self.image["width"] * self.image["channels"] if self.image else 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


_REQUIRED = ("name", "num_labels", "multi_label")


def read_meta(directory: str | Path | Location) -> DatasetMeta:
    """Read and check `DIR/meta.json` (DIR: a path or a `xlc.data.location` URI); a missing file, missing key or
    wrong type raises `DataError`."""
    path = open_location(directory) / META_FILE
    if not path.exists():
        raise DataError(f"{path}: not found; a dataset directory needs meta.json (build one with `xlc data build`)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(missing)}")
    known = {f.name for f in dataclasses.fields(DatasetMeta)}
    meta = DatasetMeta(**{k: v for k, v in raw.items() if k in known})
    if not isinstance(meta.num_labels, int) or meta.num_labels < 1:
        raise DataError(f"{path}: num_labels={meta.num_labels!r}: expected a positive integer")
    if meta.num_features is not None and (not isinstance(meta.num_features, int) or meta.num_features < 1):
        raise DataError(f"{path}: num_features={meta.num_features!r}: expected a positive integer or null")
    if meta.image is not None and (not isinstance(meta.image, dict) or sorted(meta.image) != sorted(IMAGE_KEYS)
                                   or not all(isinstance(v, int) and v > 0 for v in meta.image.values())):
        raise DataError(f"{path}: image={meta.image!r}: expected {{\"height\": H, \"width\": W, \"channels\": C}} "
                        f"with positive integers")
    if not meta.sparse and not meta.text and meta.image is None:
        raise DataError(f"{path}: needs num_features (sparse features), text: true or image; it has none")
    return meta


def as_array(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One contiguous array from a table column (a RecordBatch column already is one)."""
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _first_bad_row(offsets: np.ndarray, bad_values: np.ndarray) -> int:
    """Row holding the first True of `bad_values` (a mask over the flattened list values)."""
    first = int(np.argmax(bad_values))
    return int(np.searchsorted(offsets, first, side="right")) - 1


def _check_list_column(col: pa.ChunkedArray | pa.Array, name: str, where, row_offset: int, upper: int | None):
    """Nulls and [0, upper) range of an int32 list column."""
    arr = as_array(col)
    if arr.null_count:
        row = int(np.argmax(pc.is_null(arr).to_numpy(zero_copy_only=False)))
        raise DataError(f"{where}, row {row_offset + row}: column {name!r} is null; use an empty list instead")
    offsets = arr.offsets.to_numpy()  # [B+1], absolute into arr.values
    values = arr.values.slice(offsets[0], offsets[-1] - offsets[0])
    if values.null_count:
        raise DataError(f"{where}: column {name!r} holds a null element")
    if upper is None or len(values) == 0:
        return
    v = values.to_numpy()  # [nnz]
    if v.min() < 0 or v.max() >= upper:
        row = _first_bad_row(offsets - offsets[0], (v < 0) | (v >= upper))
        bad = v[(v < 0) | (v >= upper)][0]
        raise DataError(f"{where}, row {row_offset + row}: {name} value {bad} out of range [0, {upper})")


def _same_type(got: pa.DataType, want: pa.DataType) -> bool:
    """Type equality that ignores the list item's field name (Parquet round trips rename item -> element)."""
    if pa.types.is_list(want):
        return pa.types.is_list(got) and got.value_type == want.value_type
    return got == want


def validate_table(table: pa.Table | pa.RecordBatch, path: str, meta: DatasetMeta, row_offset: int = 0) -> None:
    """Check column types, nulls, label range and feature range of rows read from `path`.

    Only the columns present are checked (a reader may select a subset), but `labels` is always required.
    `row_offset` is the index of the table's first row within the file, so errors name the file row.
    """
    where = str(path)
    expected = row_schema(sparse=True, text=True, image=True)
    names = table.schema.names
    if LABELS not in names:
        raise DataError(f"{where}: missing column 'labels' (list<int32>); columns are {names}")
    for name in names:
        if expected.get_field_index(name) < 0:
            continue
        want, got = expected.field(name).type, table.schema.field(name).type
        if not _same_type(got, want):
            raise DataError(f"{where}: column {name!r} has type {got}; expected {want}")
    _check_list_column(table.column(LABELS), LABELS, where, row_offset, meta.num_labels)
    if FEAT_IDX in names:
        _check_list_column(table.column(FEAT_IDX), FEAT_IDX, where, row_offset, meta.num_features)
    if FEAT_VAL in names and FEAT_IDX in names:
        idx_len = pc.list_value_length(as_array(table.column(FEAT_IDX)))
        val_len = pc.list_value_length(as_array(table.column(FEAT_VAL)))
        mismatch = pc.not_equal(idx_len, val_len)
        if pc.any(mismatch).as_py():
            row = int(np.argmax(mismatch.to_numpy(zero_copy_only=False)))
            raise DataError(f"{where}, row {row_offset + row}: feat_idx and feat_val have different lengths")
    if TEXT in names:
        text = as_array(table.column(TEXT))
        if text.null_count:
            row = int(np.argmax(pc.is_null(text).to_numpy(zero_copy_only=False)))
            raise DataError(f"{where}, row {row_offset + row}: column 'text' is null; use an empty string instead")
    if IMAGE in names:
        _check_images(as_array(table.column(IMAGE)), where, row_offset, meta.image_bytes)


def _check_images(images: pa.Array, where: str, row_offset: int, size: int) -> None:
    """No nulls, and every value exactly `size` bytes (meta.json's H * W * C; 0: the set declares no image)."""
    if not size:
        raise DataError(f"{where}: has an 'image' column but meta.json declares no image shape")
    if images.null_count:
        row = int(np.argmax(pc.is_null(images).to_numpy(zero_copy_only=False)))
        raise DataError(f"{where}, row {row_offset + row}: column 'image' is null")
    lengths = pc.binary_length(images).to_numpy(zero_copy_only=False)  # [B]
    if len(lengths) and (lengths != size).any():
        row = int(np.argmax(lengths != size))
        raise DataError(f"{where}, row {row_offset + row}: image has {lengths[row]} bytes; meta.json's image shape "
                        f"needs {size}")
