"""`collapse`: neural collapse (NC1-NC4) over training epochs for softmax, ETF + dot regression and MHP.

Papyan et al. (PNAS 2020): in the terminal phase (train accuracy 100%), within-class variability vanishes
(NC1 -> 0), class means and classifier rows approach a simplex ETF (NC2), align (NC3), and the classifier acts
as nearest class mean (NC4 -> 0). Yang et al. fix the classifier to that ETF. Data: a Gaussian mixture (C classes,
unit noise around well-separated means) that an MLP fits to 100%; metrics from `xlc.eval.NCAccumulator` on the
training features the classifier sees. MHP has no single C x d classifier, so only its feature metrics are given.
"""

from __future__ import annotations

import torch

from xlc.eval import NCAccumulator
from xlc.heads import build_head
from xlc.heads.scored import classifier_rows, scored_view
from xlc.plots import plot_series
from xlc.repro._common import Classifier, Report, Setting, mlp, train_epoch

CLAIM = ("Papyan et al. / Yang et al.: in the terminal phase NC1 -> 0 and class means approach a simplex ETF "
         "(NC2 -> 0) aligned with the classifier (NC3, NC4 -> 0); a fixed ETF classifier gets there too.")
VARIANTS = [("softmax", {}), ("etf", {}), ("mhp", {"num_heads": 2})]
METRICS = ("nc1", "nc2_maxangle_h", "nc2_maxangle_w", "nc3", "nc4")


def gaussian_mixture(classes: int, per_class: int, dim: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    means = 3.0 * torch.randn(classes, dim, generator=g) / dim ** 0.5  # norm ~3, noise norm ~1
    y = torch.arange(classes).repeat_interleave(per_class)
    return means[y] + torch.randn(len(y), dim, generator=g) / dim ** 0.5, y


@torch.no_grad()
def nc_metrics(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """NC metrics of the features the classifier acts on, against its weights when it has one C x d matrix."""
    head = model.head
    head.eval()  # the ETF's BatchNorm in inference form, as at test time
    h = scored_view(head, model.features(x))
    head.train()
    weight, bias = classifier_rows(head, head.num_labels) or (None, None)
    acc = NCAccumulator(head.num_labels, h.shape[1])
    acc.update(h, y)
    out = acc.compute(weight, bias)
    out["train acc"] = float((model.topk(x, 1)[:, 0] == y).float().mean())
    return out


def run(s: Setting) -> Report:
    classes, per_class, dim, feat = s.pick(6, 20), s.pick(30, 60), 32, 32
    epochs, batch = s.pick(20, 300), 64
    every = s.pick(4, 10)  # epochs between NC measurements
    x, y = gaussian_mixture(classes, per_class, dim, s.generator())
    curves: dict[str, dict[str, tuple[list, list]]] = {m: {} for m in METRICS + ("train acc",)}
    rows = []
    for name, options in VARIANTS:
        torch.manual_seed(s.seed)
        model = Classifier(mlp(dim, 128, feat), build_head(name, classes, feat, **options))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
        gen, first = s.generator(1), None
        for epoch in range(epochs + 1):
            if epoch:
                train_epoch(model, opt, x, y, batch, gen)
                schedule.step()
            if epoch % every and epoch != epochs:
                continue
            values = nc_metrics(model, x, y)
            first = first or values
            for metric, series in curves.items():
                if metric in values:
                    xs, ys = series.setdefault(name, ([], []))
                    xs.append(epoch)
                    ys.append(values[metric])
        rows.append({"head": name, "train acc": values["train acc"], "nc1 first": first["nc1"],
                     **{m: values.get(m, "n/a") for m in METRICS}})
    figures = [plot_series(series, s.figures / f"{metric.replace(' ', '_')}.png", ylabel=metric, log=metric != "train acc",
                           title=f"{metric} over training ({classes} Gaussian classes)")
               for metric, series in curves.items()]
    return Report(CLAIM, ["head", "train acc", "nc1 first", *METRICS], rows, figures,
                  params={"classes": classes, "per_class": per_class, "dim": dim, "features": feat, "epochs": epochs,
                          "batch": batch, "optimiser": "sgd lr 0.05 (cosine to 0) momentum 0.9 wd 5e-4"},
                  notes=["'nc1 first' is NC1 at initialisation (epoch 0); the other columns are at the last epoch.",
                         "ETF metrics are on its BatchNorm + L2-normalised features; MHP has no C x d classifier "
                         "(NC2_w, NC3, NC4 n/a)."])
