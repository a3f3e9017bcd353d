"""What a fitted head (`xlc.heads.FittedHead`) sees of the training split before training starts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TrainingSplit:
    """The training split, as label-space tools the trainer provides (so heads stay torch-only).

    `label_embeddings()`: float32 [num_labels, D] unit rows, one per label, computed on first call (PIFA: the
    sum of the L2-normalised features of each label's training rows). `cluster(points, k, seed)`: balanced
    spherical k-means of unit rows [n, D] into k non-empty parts, cluster ids LongTensor [n].
    """

    num_labels: int
    seed: int
    label_embeddings: Callable[[], torch.Tensor]
    cluster: Callable[[torch.Tensor, int, int], torch.Tensor]
