"""What every baseline reads and reports: a split as scipy CSR matrices, and the test-split metric accumulator."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from xlc import data as xdata
from xlc.data.collate import list_parts, padded_targets
from xlc.data.schema import FEAT_IDX, FEAT_VAL, LABELS
from xlc.errors import ConfigError
from xlc.eval.metrics import RankingMetrics, inv_propensity
from xlc.progress import progress


def _csr(table, index_column: str, value_column: str | None, width: int) -> sp.csr_matrix:
    """One Arrow list column (+ its value column, or ones) as CSR [B, width]: the list offsets are the indptr."""
    offsets, idx = list_parts(table.column(index_column))  # [B+1], [nnz]
    val = np.ones(len(idx), np.float32) if value_column is None else list_parts(table.column(value_column))[1]
    return sp.csr_matrix((np.asarray(val, np.float32), idx, offsets), shape=(table.num_rows, width))


def read_split(data_dir: str, split: str, who: str, batch_size: int = 65536) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(features X float32 CSR [N, num_features], labels Y float32 0/1 CSR [N, num_labels]) of a sparse
    dataset's split, straight from the Parquet list columns (validated as read), never densified; canonical
    (sorted, duplicate-free column ids in each row)."""
    meta = xdata.read_meta(data_dir)
    if not meta.sparse:
        raise ConfigError(f"{data_dir}: the {who} baseline needs sparse features (meta.json num_features)")
    xs, ys = [], []
    rows = meta.num_train if split == "train" else meta.num_test
    with progress(desc=f"{who}: read {split}", total=rows, unit="row") as bar:
        for table in xdata.iter_tables(data_dir, split, batch_size, columns=[FEAT_IDX, FEAT_VAL]):
            xs.append(_csr(table, FEAT_IDX, FEAT_VAL, meta.num_features))
            ys.append(_csr(table, LABELS, None, meta.num_labels))
            bar.update(table.num_rows)
    x, y = sp.vstack(xs, format="csr"), sp.vstack(ys, format="csr")
    x.sum_duplicates()  # canonical CSR (sorted column ids, as PECOS requires); a repeated id sums, like EmbeddingBag
    y.sum_duplicates()
    y.data[:] = 1.0  # a label repeated in a row counts once
    return x, y


def truth(y: sp.csr_matrix) -> torch.Tensor:
    """The metrics' truth form of a 0/1 label CSR: LongTensor [N, M] padded with -1."""
    return torch.from_numpy(padded_targets(y.indptr, y.indices.astype(np.int64)))


def ranking_metrics(data_dir: str, ks, psp_a: float, psp_b: float) -> RankingMetrics:
    """P@k / nDCG@k / PSP@k accumulator with the dataset's inverse propensities (labels.parquet train counts)."""
    meta = xdata.read_meta(data_dir)
    counts = torch.from_numpy(xdata.label_counts(data_dir))
    return RankingMetrics(ks=ks, inv_propensity=inv_propensity(counts, meta.num_train, a=psp_a, b=psp_b))
