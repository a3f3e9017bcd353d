"""`theorem3`: a rank-1 bottleneck classifier fits N classes under CE with a bias, not without one, not under MSE.

MHE's low-rank argument (TPAMI 2025, Thm. 3 / Fig. 5): with logits O = W2 W1 F + b and |O_b| = 1, softmax(O)
can still reach full rank, and training accuracy 100%, because the bias lifts rank([W, b]) to 2; with no bias
(rank([W, b]) = 1) or under the Frobenius loss (Eq. 17) it cannot. Setup: F an N x N standard Gaussian matrix,
sample i of class i (N samples, N classes), the `lowrank` head on F directly, full-batch Adam; r = 2 for contrast.
"""

from __future__ import annotations

import torch

from xlc.heads import build_head
from xlc.plots import plot_series
from xlc.repro._common import Report, Setting

CLAIM = ("Fig. 5: with a rank-1 bottleneck, CE + bias reaches ~100% train accuracy and full-rank softmax(O); "
         "CE without bias and MSE do not; r = 2 fits under CE either way.")
VARIANTS = [("CE + bias", "ce", True), ("CE, no bias", "ce", False), ("MSE + bias", "mse", True)]
RANK_RTOL = 1e-3  # singular values above this fraction of the largest count towards the numerical rank


@torch.no_grad()
def probabilities(head, features: torch.Tensor) -> torch.Tensor:
    """softmax(O) [N, C] of the lowrank head."""
    logits = head.proj(features) @ head.weight.T
    return torch.softmax(logits if head.bias is None else logits + head.bias, dim=1)


def numerical_rank(p: torch.Tensor) -> int:
    return int(torch.linalg.matrix_rank(p.double(), rtol=RANK_RTOL))


def run(s: Setting) -> Report:
    n, epochs, lr = s.pick(20, 100), s.pick(300, 6000), 0.02
    every = max(epochs // 50, 1)
    f = torch.randn(n, n, generator=s.generator())
    y = torch.arange(n)
    rows, accuracy, rank = [], {}, {}
    for r in (1, 2):
        for name, loss, bias in VARIANTS:
            torch.manual_seed(s.seed)
            head = build_head("lowrank", n, n, rank=r, bias=bias, loss=loss)
            opt = torch.optim.Adam(head.parameters(), lr=lr)
            key = f"{name}, r={r}"
            accuracy[key], rank[key] = ([], []), ([], [])
            for epoch in range(1, epochs + 1):
                loss_value = head.loss(f, y)
                opt.zero_grad()
                loss_value.backward()
                opt.step()
                if epoch % every == 0 or epoch == epochs:
                    p = probabilities(head, f)
                    for series, value in ((accuracy[key], float((p.argmax(1) == y).float().mean())),
                                          (rank[key], numerical_rank(p))):
                        series[0].append(epoch)
                        series[1].append(value)
            rows.append({"variant": name, "r": r, "train acc": accuracy[key][1][-1],
                         "rank softmax(O)": rank[key][1][-1], "final loss": loss_value.item()})
    figures = [plot_series(accuracy, s.figures / "train_accuracy.png", ylabel="train accuracy",
                           title=f"rank-r bottleneck, N={n}"),
               plot_series(rank, s.figures / "softmax_rank.png", ylabel=f"numerical rank (rtol {RANK_RTOL})",
                           title=f"rank of softmax(O), N={n}")]
    return Report(CLAIM, ["variant", "r", "train acc", "rank softmax(O)", "final loss"], rows, figures,
                  params={"N": n, "epochs": epochs, "lr": lr, "optimiser": "adam, full batch", "rank_rtol": RANK_RTOL},
                  notes=["F is an N x N standard Gaussian matrix, row i labelled i (our reading of the paper's "
                         "setup, whose text was not retrieved); the head acts on F directly (no backbone)."])
