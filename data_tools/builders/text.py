"""The path every text builder ends in: label ids, split, tf-idf fitted on train, one writer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data_tools.featurise import WORDS, Featuriser
from data_tools.writer import DatasetWriter, label_lists, sparse_table
from xlc.data.schema import DatasetMeta
from xlc.progress import progress

CHUNK = 20_000  # rows featurised and written at a time


def label_ids(samples: Sequence[Sequence[str]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Label strings -> (names sorted lexicographically, offsets [N+1], ids [nnz]); id = index in names,
    the order MHE uses. Duplicate labels within a sample are dropped."""
    names = sorted({label for labels in samples for label in labels})
    index = {name: i for i, name in enumerate(names)}
    per_row = [sorted({index[label] for label in labels}) for labels in samples]
    offsets = np.zeros(len(per_row) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in per_row], out=offsets[1:])
    ids = np.fromiter((i for r in per_row for i in r), dtype=np.int64, count=int(offsets[-1]))
    return names, offsets, ids


def write_text_dataset(
    out_dir: str | Path,
    *,
    name: str,
    source: str,
    texts: Sequence[str],
    labels: Sequence[Sequence[str]],
    test: np.ndarray,
    multi_label: bool,
    options: dict,
    featuriser: dict = WORDS,
    overwrite: bool = False,
) -> Path:
    """Write texts with their label strings as a dataset dir: `text` kept, tf-idf `feat_idx`/`feat_val`
    fitted on the train rows only (`test` is the bool test mask [N]); vocabulary stored beside the splits."""
    names, offsets, ids = label_ids(labels)
    texts = list(texts)
    # rows are written in a seeded random order: sources list samples grouped by label, and a stream read in
    # file order would otherwise hand SGD single-label batches
    rng = np.random.default_rng(options.get("seed", 0))
    train_rows, test_rows = rng.permutation(np.flatnonzero(~test)), rng.permutation(np.flatnonzero(test))
    feats = Featuriser(**featuriser).fit([texts[i] for i in train_rows])
    meta = DatasetMeta(name=name, num_labels=len(names), multi_label=multi_label, num_features=feats.num_features,
                       text=True, source=source, created_by="xlc data build", options=dict(options))
    with DatasetWriter(out_dir, meta, overwrite=overwrite) as writer:
        meta.options["featuriser"] = feats.save(writer.path)
        meta.files["vocabulary"] = "vocab.parquet"
        for split, rows in (("train", train_rows), ("test", test_rows)):
            for start in progress(range(0, len(rows), CHUNK), desc=f"{name}: write {split}"):
                chunk = rows[start:start + CHUNK]  # [C] row numbers
                chunk_texts = [texts[i] for i in chunk]
                X = feats.transform(chunk_texts)
                lengths = offsets[chunk + 1] - offsets[chunk]  # [C]
                chunk_offsets = np.concatenate([[0], np.cumsum(lengths)])
                chunk_ids = np.concatenate([ids[offsets[i]:offsets[i + 1]] for i in chunk]) if len(chunk) else ids[:0]
                writer.write(split, sparse_table(label_lists(chunk_offsets, chunk_ids), X.indptr, X.indices, X.data,
                                                 text=chunk_texts))
        return writer.finish(names)
