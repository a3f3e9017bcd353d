"""Rendered-glyph image datasets: one class per code point, each row one font face's glyph, randomly distorted
(`data_tools.glyph_render` draws them).

Rows are rendered in a seeded random order over (class, face, render) with one generator per row, so a
build is reproducible whatever `workers` is, and written in chunks: memory is one chunk plus the fonts.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from data_tools.glyph_render import Face, load_fonts, render_chunk
from data_tools.writer import DatasetWriter, label_lists
from xlc.data.schema import IMAGE, LABELS, DatasetMeta
from xlc.progress import progress

CHUNK = 4096  # rows rendered per task and written per Parquet row group (4 MiB at 32 x 32)


@dataclass(frozen=True)
class Split:
    """The rows of one split: `renders` per (class, face in `faces`), drawn from random stream `stream`."""

    name: str
    faces: list[int]
    renders: int
    stream: int

    def rows(self, covered: np.ndarray, seed: int) -> np.ndarray:
        """int64 [N, 3] (class, face, row id) in a seeded random order, row id = position before shuffling;
        pairs whose face lacks the glyph (`covered [F, C]` False) are left out."""
        n = covered.shape[1] * len(self.faces) * self.renders
        ids = np.random.default_rng([seed, self.stream]).permutation(n)  # [N]
        label, rest = np.divmod(ids, len(self.faces) * self.renders)
        face = np.asarray(self.faces, dtype=np.int64)[rest // self.renders]
        keep = covered[face, label]
        return np.stack([label, face, ids], axis=1)[keep]


def _tasks(rows: np.ndarray, chars: list[str], size: int, augment: float, seed: int, stream: int) -> Iterator[tuple]:
    for start in range(0, len(rows), CHUNK):
        yield rows[start:start + CHUNK], chars, size, augment, seed, stream


@contextlib.contextmanager
def _renderer(faces: Sequence[Face], size: int, workers: int):
    """An ordered `imap` over `workers` rendering processes, or in this process for one worker."""
    if workers == 1:
        load_fonts(faces, size)
        yield map
        return
    context = multiprocessing.get_context("spawn")  # forked FreeType/torch state is not safe to share
    with context.Pool(workers, initializer=load_fonts, initargs=(list(faces), size)) as pool:
        yield pool.imap


def binary_rows(pixels: np.ndarray) -> pa.Array:
    """uint8 [n, b] -> a binary array of n values of b bytes each, sharing the pixel buffer."""
    n, b = pixels.shape
    offsets = pa.py_buffer(np.arange(0, (n + 1) * b, b, dtype=np.int32))  # [n+1]
    return pa.Array.from_buffers(pa.binary(), n, [None, offsets, pa.py_buffer(np.ascontiguousarray(pixels))])


def write_glyph_dataset(out_dir: str | Path, *, name: str, source: str, faces: Sequence[Face],
                        codepoints: Sequence[int], covered: np.ndarray, splits: Sequence[Split], size: int,
                        augment: float, seed: int, workers: int, options: dict, overwrite: bool = False) -> Path:
    """Render and write the dataset: label i = `codepoints[i]` (named `U+XXXX <char>`), an `image` column of
    size x size grey pixels, rows of each split in a seeded random order, `workers` rendering processes;
    `covered [F, C]` says which faces have each class's glyph."""
    chars = [chr(c) for c in codepoints]
    meta = DatasetMeta(name=name, num_labels=len(chars), multi_label=False, source=source,
                       created_by="xlc data build", image={"height": size, "width": size, "channels": 1},
                       options=dict(options, faces=[f"{f.name} ({Path(f.path).name}#{f.index})" for f in faces]))
    one_label = np.arange(CHUNK + 1, dtype=np.int64)  # list offsets: one label per row
    with DatasetWriter(out_dir, meta, overwrite=overwrite) as writer, _renderer(faces, size, workers) as imap:
        for split in splits:
            rows = split.rows(covered, seed)  # [N, 3]
            chunks = imap(render_chunk, _tasks(rows, chars, size, augment, seed, split.stream))
            for start, pixels in zip(progress(range(0, len(rows), CHUNK), desc=f"{name}: render {split.name}"),
                                     chunks):
                labels = rows[start:start + CHUNK, 0]  # [n]
                writer.write(split.name, pa.table({
                    LABELS: label_lists(one_label[:len(labels) + 1], labels),
                    IMAGE: binary_rows(pixels),
                }))
        return writer.finish([f"U+{c:04X} {chr(c)}" for c in codepoints])
