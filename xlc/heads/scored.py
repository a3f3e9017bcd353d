"""What a head's classifier scores, for neural-collapse metrics: its input features and C x d rows.

Papyan et al. measure NC on the features the last linear layer reads and compare its rows with the class
means. For a linear head (`softmax`, `chunked_softmax`, `bce`: a `weight [C, in_dim]` scored by dot
product) that is the backbone's output and `weight` (+ `bias`). `rbf` scores distances to
its rows, so NC4's argmax of `w.h + b` would not be its decision: it gets the feature metrics only. The ETF head scores BatchNorm + L2-normalised features
(`embed`) against its fixed simplex ETF, so NC is taken there, with the ETF as the rows (Yang et al.
measure it the same way). MHP, MHC, MHS, `lowrank` and sharded heads have no single C x d matrix on one rank: their
features are the backbone's and only the feature metrics (NC1, NC2 of the means) apply.
"""

from __future__ import annotations

import torch
from torch import nn

from xlc.heads.etf import ETFHead
from xlc.heads.rbf import RBFHead


def scored_view(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The features `[B, d']` that `head`'s classifier scores, given the backbone's `[B, in_dim]`."""
    return head.embed(features) if isinstance(head, ETFHead) else features


def classifier_rows(head: nn.Module, num_labels: int) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(rows `[num_labels, d']`, bias `[num_labels]` or None) in float64 on the CPU that score
    `scored_view(head, .)`, or None when the head has no such matrix (see the module docstring)."""
    if isinstance(head, ETFHead):
        return head.etf.detach().T.double().cpu(), None  # [C, d]
    if isinstance(head, RBFHead):  # distances, not dot products
        return None
    state = head.state_dict()
    weight, bias = state.get("weight"), state.get("bias")
    if weight is None or tuple(weight.shape) != (num_labels, head.in_dim):
        return None
    bias = None if bias is None or tuple(bias.shape) != (num_labels,) else bias.detach().double().cpu()
    return weight.detach().double().cpu(), bias
