"""Approximate top-k for full-softmax heads: a FAISS index over the classifier rows, and its recall/speed report.

The bias rides in an augmented dimension: rows [w_c, b_c], queries [h, 1], so the index's inner product is the
logit w_c . h + b_c. FAISS HNSW searches inner product directly; on random 32-d classifiers it recalled far more
(0.997 at efSearch 64) than the MIPS-to-L2 lift of Bachrach et al. 2014 (0.92 at efSearch 512), so no lift.
The index returns `oversample * k` rows per query, which are re-scored exactly and the top k kept.
"""

from __future__ import annotations

import time

import faiss
import numpy as np
import torch

from xlc.baselines._faiss import as_f32, make_index
from xlc.errors import ConfigError
from xlc.heads._chunked import chunked_topk


class ANNTopK:
    """`topk(features, k)` over the labels of a linear classifier `weight [C, d]` (+ `bias [C]`).

    Approximate: `index="hnsw"` (CPU) may miss true top-k labels; `"flat"` is exact (GPU when FAISS has one).
    Scores are the exact logits of the returned labels, descending, ties by the lower label id (label -1 with
    score -inf if the index found fewer than k rows).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, index: str = "hnsw",
                 hnsw_m: int = 32, ef_construction: int = 200, ef_search: int = 128, oversample: int = 2):
        if oversample < 1:
            raise ConfigError(f"ann.oversample={oversample}: expected a positive integer")
        self.weight = weight.detach().float().cpu()  # [C, d]
        self.bias = None if bias is None else bias.detach().float().cpu()  # [C]
        self.oversample = oversample
        b = np.zeros((len(self.weight), 1), np.float32) if bias is None else as_f32(self.bias[:, None])
        rows = np.concatenate([as_f32(self.weight), b], 1)  # [C, d+1]
        self.index = make_index(index, rows.shape[1], faiss.METRIC_INNER_PRODUCT, hnsw_m=hnsw_m,
                                ef_construction=ef_construction, ef_search=ef_search, field="ann.index")
        self.index.add(rows)
        self.ef_search = ef_search

    @property
    def num_labels(self) -> int:
        return len(self.weight)

    @torch.no_grad()
    def topk(self, features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 1 <= k <= self.num_labels:
            raise ConfigError(f"k={k}: expected 1 <= k <= number of labels ({self.num_labels})")
        h = features.detach().float().cpu()  # [B, d]
        q = np.concatenate([as_f32(h), np.ones((len(h), 1), np.float32)], 1)  # [B, d+1]
        wanted = min(self.oversample * k, self.num_labels)
        if hasattr(self.index, "hnsw"):
            self.index.hnsw.efSearch = max(self.ef_search, wanted)  # HNSW returns at most efSearch hits
        _, cand = self.index.search(q, wanted)  # [B, K], -1 when the index finds fewer
        cand = torch.from_numpy(cand)
        scores = torch.einsum("bkd,bd->bk", self.weight[cand.clamp(min=0)], h)  # [B, K] exact logits
        if self.bias is not None:
            scores = scores + self.bias[cand.clamp(min=0)]
        scores = scores.masked_fill(cand < 0, -torch.inf)
        cand, perm = cand.sort(dim=1)  # label order first, so the stable sort breaks ties by lower id
        scores, order = scores.gather(1, perm).sort(dim=1, descending=True, stable=True)
        return scores[:, :k].to(features.dtype), cand.gather(1, order[:, :k]).to(features.device)


@torch.no_grad()
def ann_recall(ann: ANNTopK, features: torch.Tensor, k: int) -> dict[str, float]:
    """Recall@k of `ann.topk` against exact chunked top-k, and wall times: {'recall@k', 'ann_seconds',
    'exact_seconds', 'speedup'} (speedup = exact / ann time; include a warm-up call when timing matters)."""
    h = features.detach().float().cpu()
    t0 = time.perf_counter()
    _, approx = ann.topk(h, k)
    t1 = time.perf_counter()
    _, exact = chunked_topk(h, ann.weight, ann.bias, k)
    t2 = time.perf_counter()
    hit = (approx[:, :, None] == exact[:, None, :]).any(2)  # [B, k]
    return {f"recall@{k}": float(hit.float().mean()), "ann_seconds": t1 - t0, "exact_seconds": t2 - t1,
            "speedup": (t2 - t1) / max(t1 - t0, 1e-9)}
