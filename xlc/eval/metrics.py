"""Ranking metrics for extreme classification: P@k, nDCG@k, PSP@k, accuracy, and a streaming accumulator.

Conventions (systems.md §5; they match napkinXC's `metrics` module, checked in tests/eval/test_metrics.py):
- `pred` is `LongTensor[N, >=k]` of labels already ranked best first; a tie in the producer's scores is
  resolved by the producer, and here the label listed first ranks higher. A label repeated in a row counts
  once (at its first rank) and a negative entry (e.g. -1 padding from a baseline) is a miss, so padding
  can never match the -1 padding of `truth`.
- `truth` is single-label `LongTensor[N]` or padded multi-label `LongTensor[N, M]` (-1 = no label); a label
  repeated in a truth row counts once. A row with no labels scores 0 on every metric and still counts in N
  (napkinXC's `zero_division=0`).
- nDCG@k divides DCG@k by the ideal DCG over min(k, |y|) true labels.
- PSP@k with `normalized=True` is a ratio of dataset means: sum over rows of PSP@k divided by the sum of
  the best achievable PSP@k (each row's true labels ranked by inverse propensity), as pyxclib and napkinXC
  report it. `normalized=False` is the plain mean of PSP@k, which is not bounded by 1.
- `accuracy` is the fraction of rows whose top-ranked label is a true label (top-1 accuracy; P@1 when
  multi-label).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from xlc.errors import ConfigError


def inv_propensity(train_label_counts, num_train: int, a: float = 0.55, b: float = 1.5) -> torch.Tensor:
    """Inverse propensities 1/p_l = 1 + C (N_l + B)^-A with C = (ln N - 1)(B + 1)^A (Jain et al. 2016).

    Defaults A=0.55, B=1.5; Amazon sets use A=0.6, B=2.6 and Wikipedia sets A=0.5, B=0.4.
    Returns float64 `[L]`.
    """
    counts = torch.as_tensor(train_label_counts, dtype=torch.float64)  # [L]
    if counts.dim() != 1 or (counts < 0).any():
        raise ConfigError("train_label_counts: expected a 1-d array of non-negative per-label training counts")
    if num_train < 2:
        raise ConfigError(f"num_train={num_train}: the propensity model needs at least 2 training points")
    c = (math.log(num_train) - 1.0) * (b + 1.0) ** a
    return 1.0 + c * (counts + b) ** (-a)  # [L]


def _as_rows(pred: torch.Tensor, truth: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate shapes; return pred[:, :k] and truth as [N, M]."""
    pred = torch.as_tensor(pred)
    truth = torch.as_tensor(truth)
    if pred.dim() == 1:
        pred = pred[:, None]
    if truth.dim() == 1:
        truth = truth[:, None]
    if pred.dim() != 2 or truth.dim() != 2:
        raise ConfigError(f"pred {tuple(pred.shape)} / truth {tuple(truth.shape)}: expected [N, k] and [N] or [N, M]")
    if pred.shape[0] != truth.shape[0]:
        raise ConfigError(f"pred has {pred.shape[0]} rows but truth has {truth.shape[0]}: they must match")
    if k < 1 or pred.shape[1] < k:
        raise ConfigError(f"k={k}: expected 1 <= k <= pred.shape[1]={pred.shape[1]}")
    return pred[:, :k].long(), truth.long()


def _first_occurrence(x: torch.Tensor) -> torch.Tensor:
    """[N, K] bool: entry is >= 0 and not equal to any entry to its left in the row."""
    earlier = x[:, :, None] == x[:, None, :]  # [N, K, K]
    earlier = torch.tril(earlier, diagonal=-1).any(-1)  # [N, K]
    return (x >= 0) & ~earlier


def _hits(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """[N, k] float64: 1 where the ranked label is a true label seen for the first time in the row."""
    in_truth = (pred[:, :, None] == truth[:, None, :]).any(-1)  # [N, k]; pred < 0 is masked below
    return (in_truth & _first_occurrence(pred)).double()


def _distinct_truth(truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(truth rows sorted, [N, M] mask of distinct valid labels); O(M log M) per row, unlike the [K, K] test."""
    srt = truth.sort(dim=1).values  # [N, M]
    repeat = torch.zeros_like(srt, dtype=torch.bool)
    repeat[:, 1:] = srt[:, 1:] == srt[:, :-1]
    return srt, (srt >= 0) & ~repeat


def _num_true(truth: torch.Tensor) -> torch.Tensor:
    """[N] number of distinct valid labels per truth row."""
    return _distinct_truth(truth)[1].sum(1)


_DISCOUNT_CACHE: dict[int, torch.Tensor] = {}


def _discounts(k: int) -> torch.Tensor:
    if k not in _DISCOUNT_CACHE:
        _DISCOUNT_CACHE[k] = 1.0 / torch.log2(torch.arange(k, dtype=torch.float64) + 2.0)  # [k]: 1/log2(r+1)
    return _DISCOUNT_CACHE[k]


def _precision_sum(hits: torch.Tensor, k: int) -> torch.Tensor:
    return hits[:, :k].sum() / k


def _ndcg_sum(hits: torch.Tensor, n_true: torch.Tensor, k: int) -> torch.Tensor:
    disc = _discounts(k)
    dcg = hits[:, :k] @ disc  # [N]
    ideal = torch.cat([torch.zeros(1, dtype=torch.float64), disc.cumsum(0)])[n_true.clamp(max=k)]  # [N]
    return torch.where(ideal > 0, dcg / ideal.clamp(min=1e-300), torch.zeros_like(dcg)).sum()


def _psp_sums(pred, truth, hits, inv_prop: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over rows of PSP@k, sum over rows of best achievable PSP@k)."""
    q_pred = inv_prop[pred[:, :k].clamp(min=0)]  # [N, k]
    num = (hits[:, :k] * q_pred).sum() / k
    srt, distinct = _distinct_truth(truth)
    q_true = torch.where(distinct, inv_prop[srt.clamp(min=0)], torch.zeros((), dtype=torch.float64))  # [N, M]
    best = q_true.sort(dim=1, descending=True).values[:, :k].sum() / k  # [N, M] -> top-k true weights
    return num, best


def _check_inv_prop(inv_prop, pred, truth) -> torch.Tensor:
    inv_prop = torch.as_tensor(inv_prop, dtype=torch.float64)
    top = max(int(pred.max()) if pred.numel() else -1, int(truth.max()) if truth.numel() else -1)
    if inv_prop.dim() != 1 or top >= inv_prop.shape[0]:
        raise ConfigError(f"inv_propensity: expected a 1-d tensor covering every label (max label {top}), "
                          f"got shape {tuple(inv_prop.shape)}")
    return inv_prop


def precision_at_k(pred, truth, k: int) -> float:
    """Mean over rows of (1/k) * #true labels among the top k."""
    pred, truth = _as_rows(pred, truth, k)
    return float(_precision_sum(_hits(pred, truth), k) / max(len(pred), 1))


def ndcg_at_k(pred, truth, k: int) -> float:
    """Mean over rows of DCG@k / ideal DCG@k (rows with no labels score 0)."""
    pred, truth = _as_rows(pred, truth, k)
    return float(_ndcg_sum(_hits(pred, truth), _num_true(truth), k) / max(len(pred), 1))


def psp_at_k(pred, truth, k: int, inv_propensity, normalized: bool = True) -> float:
    """Propensity-scored precision at k; normalised as a ratio of dataset means (see module docstring)."""
    pred, truth = _as_rows(pred, truth, k)
    inv_prop = _check_inv_prop(inv_propensity, pred, truth)
    num, best = _psp_sums(pred, truth, _hits(pred, truth), inv_prop, k)
    if normalized:
        return float(num / best) if best > 0 else 0.0
    return float(num / max(len(pred), 1))


def accuracy(pred, truth) -> float:
    """Fraction of rows whose top-ranked label is a true label."""
    return precision_at_k(pred, truth, 1)


def metric_names(ks: Sequence[int]) -> list[str]:
    """The names `RankingMetrics.compute` reports when given propensities, as a run's evaluation does."""
    return [f"{name}@{k}" for name in ("p", "ndcg", "psp") for k in sorted(set(ks))] + ["acc"]


class RankingMetrics:
    """Streaming P@k, nDCG@k, PSP@k (when `inv_propensity` is given) and accuracy over batches.

    `state()` is a flat float64 tensor of sums, laid out as [rows, p@k.., ndcg@k.., psp@k.., psp_best@k.., acc],
    so a distributed caller all-reduces it (SUM) and calls `load_state`; `merge` adds another accumulator.
    """

    def __init__(self, ks: Sequence[int] = (1, 3, 5), inv_propensity=None):
        self.ks = tuple(sorted(set(int(k) for k in ks)))
        if not self.ks or self.ks[0] < 1:
            raise ConfigError(f"eval.k={list(ks)}: expected positive integers")
        self.inv_prop = None if inv_propensity is None else torch.as_tensor(inv_propensity, dtype=torch.float64)
        n = len(self.ks)
        self._sums = torch.zeros(1 + 2 * n + (2 * n if self.inv_prop is not None else 0) + 1, dtype=torch.float64)

    def update(self, pred, truth) -> None:
        pred, truth = _as_rows(pred, truth, self.ks[-1])
        hits = _hits(pred, truth)  # [N, kmax]
        n_true = _num_true(truth)  # [N]
        parts = [torch.tensor(float(len(pred)), dtype=torch.float64)]
        parts += [_precision_sum(hits, k) for k in self.ks]
        parts += [_ndcg_sum(hits, n_true, k) for k in self.ks]
        if self.inv_prop is not None:
            inv_prop = _check_inv_prop(self.inv_prop, pred, truth)
            psp = [_psp_sums(pred, truth, hits, inv_prop, k) for k in self.ks]
            parts += [p[0] for p in psp] + [p[1] for p in psp]
        parts.append(hits[:, 0].sum())
        self._sums += torch.stack(parts)
        assert len(parts) == len(self._sums), (len(parts), len(self._sums))

    def state(self) -> torch.Tensor:
        return self._sums.clone()

    def load_state(self, state: torch.Tensor) -> None:
        state = torch.as_tensor(state, dtype=torch.float64).reshape(-1)
        if state.shape != self._sums.shape:
            raise ConfigError(f"state of length {state.numel()}: this accumulator expects {self._sums.numel()}")
        self._sums = state.clone()

    def merge(self, other: "RankingMetrics") -> "RankingMetrics":
        self.load_state(self._sums + other.state())
        return self

    def compute(self) -> dict[str, float]:
        """{'p@1', 'p@3', ..., 'ndcg@k', 'psp@k' (normalised), 'acc'}; zeros before any update."""
        s = self._sums.tolist()
        rows, n = max(s[0], 1.0), len(self.ks)
        out = {f"p@{k}": s[1 + i] / rows for i, k in enumerate(self.ks)}
        out.update({f"ndcg@{k}": s[1 + n + i] / rows for i, k in enumerate(self.ks)})
        if self.inv_prop is not None:
            for i, k in enumerate(self.ks):
                num, best = s[1 + 2 * n + i], s[1 + 3 * n + i]
                out[f"psp@{k}"] = num / best if best > 0 else 0.0
        out["acc"] = s[-1] / rows
        return out
