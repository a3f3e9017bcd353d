"""The `image` column: meta.json's shape, validation errors naming file and row, collate to uint8 rows
(also from a sliced Arrow array), streamed reading. Files are written with plain pyarrow."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xlc.data import collate, iter_batches, read_meta
from xlc.errors import DataError

SHAPE = {"height": 4, "width": 3, "channels": 2}  # 24 bytes a row


def make(tmp_path, images, *, image=SHAPE, rows_per_file=10**9):
    """A dataset dir whose train rows are `images` (bytes or None), label = row % 5."""
    root = tmp_path / "ds"
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
    for i, start in enumerate(range(0, len(images), rows_per_file)):
        chunk = images[start:start + rows_per_file]
        pq.write_table(pa.table({
            "labels": pa.array([[(start + j) % 5] for j in range(len(chunk))], pa.list_(pa.int32())),
            "image": pa.array(chunk, pa.binary()),
        }), root / "train" / f"part-{i:05d}.parquet", row_group_size=7)
    pq.write_table(pa.table({"labels": pa.array([], pa.list_(pa.int32())), "image": pa.array([], pa.binary())}),
                   root / "test" / "part-00000.parquet")
    pq.write_table(pa.table({"label_id": pa.array(np.arange(5, dtype=np.int32)), "name": [str(i) for i in range(5)],
                             "train_count": pa.array(np.zeros(5, dtype=np.int64))}), root / "labels.parquet")
    (root / "meta.json").write_text(json.dumps(dict(name="img", num_labels=5, multi_label=False, image=image)))
    return root


def rows(n, seed=0):
    return [bytes(r) for r in np.random.default_rng(seed).integers(0, 256, (n, 24), dtype=np.uint8)]


def test_streamed_images_equal_the_stored_bytes(tmp_path):
    images = rows(50)
    root = make(tmp_path, images, rows_per_file=20)
    assert read_meta(root).image_bytes == 24
    batches = list(iter_batches(root, "train", 16))
    got = np.concatenate([b.image.numpy() for b in batches])  # [50, 24]
    assert got.dtype == np.uint8 and got.tobytes() == b"".join(images)
    assert np.concatenate([b.targets.numpy() for b in batches]).tolist() == [i % 5 for i in range(50)]


def test_collate_of_a_sliced_table():
    images = rows(9)
    table = pa.table({"labels": pa.array([[1]] * 9, pa.list_(pa.int32())), "image": pa.array(images, pa.binary())})
    batch = collate(table.slice(3, 4), multi_label=False)
    assert batch.image.shape == (4, 24) and batch.image.numpy().tobytes() == b"".join(images[3:7])
    batch.image[0, 0] = 0  # a writable copy, not Arrow's read-only buffer


@pytest.mark.parametrize("bad, message", [
    (lambda imgs: imgs[:12] + [imgs[12][:-1]] + imgs[13:],
     r"part-00000.parquet, row 12: image has 23 bytes; .* needs 24"),
    (lambda imgs: imgs[:8] + [None] + imgs[9:], r"part-00000.parquet, row 8: column 'image' is null"),
])
def test_bad_rows_name_file_and_row(tmp_path, bad, message):
    root = make(tmp_path, bad(rows(20)))
    with pytest.raises(DataError, match=message):
        list(iter_batches(root, "train", 32))


def test_meta_image_shape_is_checked(tmp_path):
    for image in ({"height": 4, "width": 3}, {"height": 4, "width": 0, "channels": 1}, [4, 3, 2]):
        root = make(tmp_path / str(len(str(image))), rows(3), image=image)
        with pytest.raises(DataError, match=r"image=.*: expected \{\"height\": H, \"width\": W, \"channels\": C\}"):
            read_meta(root)
    root = make(tmp_path / "none", rows(3), image=None)
    with pytest.raises(DataError, match="needs num_features .*, text: true or image"):
        read_meta(root)
