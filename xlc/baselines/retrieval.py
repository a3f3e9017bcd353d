"""Open-set identification by nearest identity templates (FAISS): embeddings of classes a model never trained on.

Each gallery identity's template is the L2-normalised mean of its L2-normalised gallery embeddings (the IJB
protocol's template); a probe's ranking is the identities by cosine to their templates, exact (flat inner
product index, on the GPU when the FAISS build has one). top-k identification = the fraction of probes whose
identity is among their k nearest templates.
"""

from __future__ import annotations

import faiss
import numpy as np

from xlc.baselines._faiss import as_f32, make_index
from xlc.errors import DataError


def templates(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(identities [I] ascending, templates [I, d] float32 unit rows) of gallery `embeddings [N, d]` with
    `labels [N]`."""
    x = as_f32(embeddings)
    faiss.normalize_L2(x)
    identities, index = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(identities), x.shape[1]), dtype=np.float64)  # [I, d]
    np.add.at(sums, index, x)
    out = as_f32(sums)
    faiss.normalize_L2(out)
    return identities, out


def identification(gallery: np.ndarray, gallery_labels: np.ndarray, probes: np.ndarray, probe_labels: np.ndarray,
                   ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """{"open_set/top{k}": top-k identification rate of the probes, "open_set/identities": I} (module docstring);
    a probe whose identity has no gallery image counts as a miss."""
    identities, reps = templates(gallery, gallery_labels)
    if len(identities) < max(ks):
        raise DataError(f"open-set gallery has {len(identities)} identities; top-{max(ks)} needs at least as many")
    q = as_f32(probes)
    faiss.normalize_L2(q)
    index = make_index("flat", reps.shape[1], faiss.METRIC_INNER_PRODUCT)
    index.add(reps)
    _, nearest = index.search(q, max(ks))  # [P, k] template rows, best first
    hits = identities[nearest] == np.asarray(probe_labels)[:, None]  # [P, k]
    out = {f"open_set/top{k}": float(hits[:, :k].any(1).mean()) for k in ks}
    out["open_set/identities"] = len(identities)
    return out
