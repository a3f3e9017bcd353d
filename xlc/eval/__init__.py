"""Evaluation: ranking metrics (`metrics`) and neural-collapse metrics (`collapse`). torch/numpy only."""

from xlc.eval.collapse import NCAccumulator, ncc_mismatch
from xlc.eval.metrics import (
    RankingMetrics,
    accuracy,
    inv_propensity,
    ndcg_at_k,
    precision_at_k,
    psp_at_k,
)

__all__ = ["NCAccumulator", "ncc_mismatch", "RankingMetrics", "accuracy", "inv_propensity", "ndcg_at_k", "precision_at_k", "psp_at_k"]
