"""What every `xlc repro` experiment shares: its setting, the result table, small CPU training loops and evaluation.

Experiments are plain torch loops on small in-memory data: a model is an optional backbone (an MLP) plus a head
from `xlc.heads.build_head`, trained with the head's own `loss` and scored with its `topk`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from xlc.eval.metrics import RankingMetrics
from xlc.heads import build_head

SIZES = ("tiny", "default")


@dataclass(frozen=True)
class Setting:
    """One invocation: `size` (tiny: seconds, for tests; default: minutes), `seed`, where figures go and
    where built datasets are cached."""

    size: str
    seed: int
    figures: Path
    data_cache: Path

    def pick(self, tiny, default):
        """The value for this size."""
        return tiny if self.size == "tiny" else default

    def generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1000 + offset)


@dataclass
class Report:
    """An experiment's outcome: the paper's `claim`, a table (`columns`, `rows` of dicts keyed by column), the
    PNGs it drew, the `params` it ran with and `notes` on how it departs from the paper."""

    claim: str
    columns: list[str]
    rows: list[dict]
    figures: list[Path] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"claim": self.claim, "columns": self.columns, "rows": self.rows, "params": self.params,
                "notes": self.notes, "figures": [p.name for p in self.figures]}

    def markdown(self) -> str:
        def cell(v) -> str:
            return f"{v:.4g}" if isinstance(v, float) else str(v)

        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(cell(row.get(c, "")) for c in self.columns) + " |" for row in self.rows]
        return "\n".join(lines)


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """A two-layer ReLU backbone: the features the head sees."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class Classifier(nn.Module):
    """backbone (features) + head (loss / topk)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head.loss(self.backbone(x), y)

    @torch.no_grad()
    def features(self, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        self.eval()
        out = torch.cat([self.backbone(x[i:i + chunk]) for i in range(0, len(x), chunk)])
        self.train()
        return out

    @torch.no_grad()
    def topk(self, x: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
        """Predicted labels [N, k]."""
        self.eval()
        out = torch.cat([self.head.topk(self.backbone(x[i:i + chunk]), k)[1] for i in range(0, len(x), chunk)])
        self.train()
        return out


def train_epoch(model: nn.Module, optimiser: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                batch_size: int, generator: torch.Generator) -> float:
    """One shuffled pass of minibatch steps on `model.loss`; returns the mean loss."""
    order = torch.randperm(len(x), generator=generator)
    total = 0.0
    for start in range(0, len(x), batch_size):
        rows = order[start:start + batch_size]
        loss = model.loss(x[rows], y[rows])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        total += loss.item() * len(rows)
    return total / len(x)


FIT = {"backbone": "mlp 512-256", "batch": 256, "optimiser": "adam 3e-3"}  # what `fit_and_score` trains


def fit_and_score(s: Setting, name: str, options: dict, train, test, num_labels: int, epochs: int) -> dict[str, float]:
    """Train an MLP (512-256) + head `name` for `epochs` on split `train` (`.x`, `.y`); P@1/P@5 on `test`."""
    torch.manual_seed(s.seed)
    model = Classifier(mlp(train.x.shape[1], 512, 256), build_head(name, num_labels, 256, **options))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = s.generator(2)
    for _ in range(epochs):
        train_epoch(model, opt, train.x, train.y, 256, gen)
    return precision(model, test.x, test.y)


def precision(model: Classifier, x: torch.Tensor, y: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """{'p@k': ...} of `model.topk` against truth y ([N] or [N, M] padded with -1)."""
    k = min(max(ks), model.head.num_labels)
    metrics = RankingMetrics(ks=[min(k_, k) for k_ in ks])
    metrics.update(model.topk(x, k), y)
    out = metrics.compute()
    return {f"p@{k_}": out[f"p@{min(k_, k)}"] for k_ in ks}


__all__ = ["FIT", "SIZES", "Classifier", "Report", "Setting", "fit_and_score", "mlp", "precision", "train_epoch"]
