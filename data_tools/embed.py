"""`xlc data embed SRC OUT`: a copy of a text dataset whose features are MiniLM sentence embeddings.

Each row's `text` goes through the packaged all-MiniLM-L6-v2 (`xlc.backbones.minilm`, never downloaded),
mean-pooled and L2-normalised: 384 dense values stored in the sparse columns as feat_idx = 0..383, so every
sparse backbone (and the kNN/tree baselines) trains on them unchanged. Labels, splits, row order and text are
kept; the embedding has nothing fitted on the data, so no test information can leak into it. Rows stream
through in batches of `batch_size` (memory: one batch of text and embeddings); the output appears only when
complete.
"""

from __future__ import annotations

import dataclasses
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from data_tools.writer import DatasetWriter, check_out_dir, sparse_table
from xlc.backbones.minilm import DIM, PACKAGE, MiniLMEncoder
from xlc.data import iter_tables, label_names, read_meta
from xlc.data.schema import LABELS, SPLITS, TEXT, as_array
from xlc.errors import DataError
from xlc.progress import progress


ENCODE_BATCH = 64  # texts per encoder call, taken in length order so little of a call is padding


def embed_sorted(encoder: MiniLMEncoder, texts: list[str]) -> np.ndarray:
    """Unit MiniLM embeddings [N, 384] float32, encoded in batches of similar length (each call pads to its
    longest text, so row order would pad short texts to long ones), returned in the order of `texts`."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), DIM), dtype=np.float32)
    for start in range(0, len(texts), ENCODE_BATCH):
        rows = order[start:start + ENCODE_BATCH]
        out[rows] = encoder.embed([texts[i] for i in rows], normalize=True).numpy()
    return out


def embed_dataset(src: str | Path, out_dir: str | Path, *, batch_size: int = 2048, max_length: int = 128,
                  overwrite: bool = False) -> Path:
    """Write OUT_DIR: SRC's rows with `feat_idx`/`feat_val` replaced by MiniLM embeddings of `text`."""
    check_out_dir(out_dir, overwrite)
    meta = read_meta(src)
    if not meta.text:
        raise DataError(f"{src}/meta.json: text is false; `xlc data embed` needs a dataset with a text column")
    encoder = MiniLMEncoder(hidden=[], max_length=max_length, freeze=True).eval()
    featuriser = {"kind": "minilm", "package": f"{PACKAGE}=={version(PACKAGE)}", "max_length": max_length,
                  "pooling": "mean", "normalize": True}
    out_meta = dataclasses.replace(
        meta, num_features=DIM, source=f"{meta.source}; MiniLM embeddings of its text", created_by="xlc data embed",
        files={}, options=dict(meta.options, featuriser=featuriser, embedded_from=str(src)),
    )
    dense_idx = np.arange(DIM, dtype=np.int32)
    with DatasetWriter(out_dir, out_meta, overwrite=overwrite) as writer, torch.inference_mode():
        for split in SPLITS:
            rows = meta.num_train if split == "train" else meta.num_test
            with progress(desc=f"embed {split}", total=rows, unit="row") as bar:
                for table in iter_tables(src, split, batch_size, columns=[LABELS, TEXT]):
                    texts = table.column(TEXT).to_pylist()
                    vectors = embed_sorted(encoder, texts)  # [B, 384]
                    indptr = np.arange(0, DIM * (len(texts) + 1), DIM)  # [B+1]
                    writer.write(split, sparse_table(as_array(table.column(LABELS)), indptr,
                                                     np.tile(dense_idx, len(texts)), vectors.ravel(), text=texts))
                    bar.update(len(table))
        return writer.finish(label_names(src))
