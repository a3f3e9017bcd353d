"""Synthetic sparse multi-/single-label data with power-law label frequencies, up to 10M+ labels.

Label rank r is floor of a draw from the density ∝ x^-power on [1, L+1) (inverse CDF), then mapped to a
label id by a seeded permutation, so frequent labels are scattered over the id range. Each label l owns
`proto_features` feature ids given by a hash of (l, j), so no per-label table is stored; a row's features
are its labels' prototypes (value ~ U[0.5, 1.5]) plus `noise_features` uniform random ids, L2-normalised.
The label set is recoverable from the features, so heads can learn it. Rows are generated and written
`CHUNK` at a time: memory is O(num_labels) for counts/permutation plus one chunk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from data_tools.writer import DatasetWriter, label_lists, sparse_table
from xlc.data.schema import DatasetMeta
from xlc.errors import ConfigError
from xlc.progress import progress

CHUNK = 100_000


def zipf_ranks(rng: np.random.Generator, n: int, num_labels: int, power: float) -> np.ndarray:
    """n ranks in [0, num_labels), p(rank r+1) ∝ (r+1)^-power, by inverting the continuous CDF on [1, L+1)."""
    u = rng.random(n)
    top = num_labels + 1.0
    if abs(power - 1.0) < 1e-9:
        r = np.exp(u * np.log(top))
    else:
        e = 1.0 - power
        r = (u * (top**e - 1.0) + 1.0) ** (1.0 / e)
    return np.minimum(r.astype(np.int64) - 1, num_labels - 1)


def proto_features(labels: np.ndarray, per_label: int, num_features: int) -> np.ndarray:
    """[n, per_label] feature ids of each label's prototype: a multiplicative hash of (label, j)."""
    j = np.arange(per_label, dtype=np.uint64)
    h = labels.astype(np.uint64)[:, None] * np.uint64(0x9E3779B97F4A7C15) + j * np.uint64(0xC2B2AE3D27D4EB4F)
    h ^= h >> np.uint64(29)
    return (h % np.uint64(num_features)).astype(np.int64)


def _chunk(rng, n, perm, num_features, labels_per_sample, power, proto, noise):
    """One chunk of rows: (label offsets [n+1], label ids, feature offsets [n+1], feature ids, values)."""
    num_labels = len(perm)
    if labels_per_sample == 1.0:
        per_row = np.ones(n, dtype=np.int64)
    else:
        per_row = 1 + rng.poisson(labels_per_sample - 1.0, n)  # [n], at least one label
    rows = np.repeat(np.arange(n), per_row)
    labels = perm[zipf_ranks(rng, len(rows), num_labels, power)]
    key = np.unique(rows * num_labels + labels)  # sorted by row, duplicates within a row dropped
    rows, labels = key // num_labels, key % num_labels
    lab_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=lab_offsets[1:])

    # features: prototypes of each (row, label) pair, then noise ids; grouped by row for the list layout
    proto_idx = proto_features(labels, proto, num_features).ravel()  # [nnz_labels * proto]
    proto_row = np.repeat(rows, proto)
    noise_idx = rng.integers(0, num_features, n * noise)
    noise_row = np.repeat(np.arange(n), noise)
    feat_row = np.concatenate([proto_row, noise_row])
    feat_idx = np.concatenate([proto_idx, noise_idx])
    feat_val = np.concatenate([rng.uniform(0.5, 1.5, len(proto_idx)), rng.uniform(0.0, 0.5, len(noise_idx))])
    order = np.argsort(feat_row, kind="stable")
    feat_row, feat_idx, feat_val = feat_row[order], feat_idx[order], feat_val[order]
    norms = np.sqrt(np.bincount(feat_row, feat_val**2, minlength=n))  # [n]
    feat_val = feat_val / norms[feat_row]
    feat_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(feat_row, minlength=n), out=feat_offsets[1:])
    return lab_offsets, labels, feat_offsets, feat_idx, feat_val


def build(out_dir: str, *, samples: int = 100_000, labels: int = 100_000, labels_per_sample: float = 1.0,
          power: float = 1.1, features: int = 100_000, proto_features_per_label: int = 8,
          noise_features: int = 8, test_fraction: float = 0.2, seed: int = 0, overwrite: bool = False) -> Path:
    """Write a synthetic dataset dir; `labels_per_sample` 1 gives single-label, more gives multi-label with
    1 + Poisson(labels_per_sample - 1) labels per row."""
    for field_name, value, low in (("samples", samples, 1), ("labels", labels, 1), ("features", features, 1),
                                   ("labels_per_sample", labels_per_sample, 1.0), ("power", power, 0.0)):
        if value < low:
            raise ConfigError(f"synthetic --{field_name.replace('_', '-')}={value}: expected >= {low}")
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"synthetic --test-fraction={test_fraction}: expected in [0, 1)")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(labels).astype(np.int64 if labels > 2**31 - 1 else np.int32)  # rank -> label id
    options = dict(samples=samples, labels=labels, labels_per_sample=labels_per_sample, power=power,
                   features=features, proto_features_per_label=proto_features_per_label,
                   noise_features=noise_features, test_fraction=test_fraction, seed=seed)
    meta = DatasetMeta(name="synthetic", num_labels=labels, multi_label=labels_per_sample > 1.0,
                       num_features=features, source="xlc synthetic generator", created_by="xlc data build",
                       options=options)
    with DatasetWriter(out_dir, meta, overwrite=overwrite) as writer:
        for i, start in enumerate(progress(range(0, samples, CHUNK), desc="synthetic")):
            n = min(CHUNK, samples - start)
            chunk_rng = np.random.default_rng([seed, i])  # chunk i is the same whatever the chunk count before
            lab_off, lab, f_off, f_idx, f_val = _chunk(chunk_rng, n, perm, features, labels_per_sample, power,
                                                       proto_features_per_label, noise_features)
            table = sparse_table(label_lists(lab_off, lab), f_off, f_idx, f_val)
            test = chunk_rng.random(n) < test_fraction
            writer.write("train", table.filter(pa.array(~test)))
            writer.write("test", table.filter(pa.array(test)))
        return writer.finish()
