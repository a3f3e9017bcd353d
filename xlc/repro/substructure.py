"""`substructure`: does a softmax trained on merged labels keep the sub-labels apart in its features?

Neural collapse (Papyan et al.) says that in the terminal phase every training class collapses to its mean,
which would erase any structure inside a class; MHE's claim that label ids need no semantics (decompositions
merge arbitrary labels into one head digit) leans on the features still separating what a head merges.
Here ICD-10-CM full codes (sub-labels with >= 3 training rows) are merged into super-classes either by their
3-character category (semantic) or at random (same super-class sizes); a softmax on an MLP learns the
super-classes; over epochs we k-means (FAISS) each super-class's training features into as many clusters as it
has sub-labels and report the adjusted Rand index against them, and the test accuracy on the sub-labels of
a nearest-class-mean probe fitted on the frozen training features.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from xlc import data as xdata
from xlc.heads import build_head
from xlc.plots import plot_series
from xlc.repro._common import Classifier, Report, Setting, mlp, train_epoch
from xlc.repro._data import Split, built, dense_splits

CLAIM = ("Neural collapse: training on merged labels collapses each super-class, so its sub-label structure "
         "(ARI of k-means vs sub-labels, nearest-class-mean probe accuracy) should fade as training proceeds.")
MIN_ROWS = 3  # training rows a full code needs to count as a sub-label


def sub_labels(directory, train: Split, test: Split, max_supers: int) -> tuple[Split, Split, torch.Tensor]:
    """(train, test) on the kept full codes renumbered 0..S-1, and each one's 3-character category id [S]:
    codes with >= MIN_ROWS training rows, in categories holding >= 2 of them (the `max_supers` largest)."""
    names = xdata.label_names(directory)
    counts = torch.bincount(train.y, minlength=len(names))
    codes = [c for c in range(len(names)) if counts[c] >= MIN_ROWS]
    categories = sorted({names[c][:3] for c in codes})
    per = {cat: [c for c in codes if names[c][:3] == cat] for cat in categories}
    kept_cats = sorted((cat for cat in categories if len(per[cat]) >= 2), key=lambda cat: -len(per[cat]))[:max_supers]
    kept = sorted(c for cat in kept_cats for c in per[cat])
    new_ids = torch.full((len(names),), -1, dtype=torch.long)
    new_ids[kept] = torch.arange(len(kept))
    cat_id = {cat: i for i, cat in enumerate(sorted(kept_cats))}
    super_of = torch.tensor([cat_id[names[c][:3]] for c in kept])
    out = [Split(split.x[new_ids[split.y] >= 0], new_ids[split.y][new_ids[split.y] >= 0]) for split in (train, test)]
    return out[0], out[1], super_of


def cluster_ari(features: torch.Tensor, sub: torch.Tensor, super_of: torch.Tensor, seed: int) -> float:
    """Row-weighted mean over super-classes of the ARI between a k-means of their rows (k = their sub-labels)
    and the sub-labels."""
    supers = super_of[sub]
    total, rows = 0.0, 0
    for s in torch.unique(supers):
        mask = supers == s
        x, truth = features[mask].numpy().astype(np.float32), sub[mask].numpy()
        k = len(np.unique(truth))
        km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, verbose=False, min_points_per_centroid=1)
        km.train(np.ascontiguousarray(x))
        assign = km.index.search(np.ascontiguousarray(x), 1)[1][:, 0]
        total += adjusted_rand_score(truth, assign) * len(truth)
        rows += len(truth)
    return total / rows


def probe_accuracy(train_h: torch.Tensor, train_y: torch.Tensor, test_h: torch.Tensor, test_y: torch.Tensor,
                   num_classes: int) -> float:
    """Test accuracy of a nearest-class-mean probe (a linear classifier: cosine to each sub-label's mean of
    the L2-normalised training features)."""
    a, b = torch.nn.functional.normalize(train_h, dim=1), torch.nn.functional.normalize(test_h, dim=1)
    means = torch.zeros(num_classes, a.shape[1]).index_add_(0, train_y, a)
    return float(((b @ torch.nn.functional.normalize(means, dim=1).T).argmax(1) == test_y).float().mean())


def run(s: Setting) -> Report:
    directory = built(s.data_cache, "icd10cm", full_codes=True)
    train, test, super_semantic = sub_labels(directory, *dense_splits(directory, s.pick(256, 512), s.seed)[:2],
                                             max_supers=s.pick(20, 1000))
    num_sub, num_super = len(super_semantic), int(super_semantic.max()) + 1
    merges = {"category": super_semantic,
              "random": super_semantic[torch.randperm(num_sub, generator=s.generator(3))]}  # same sizes, random members
    epochs = s.pick(6, 20)
    checkpoints = sorted({0, *range(0, epochs + 1, max(epochs // 6, 1)), epochs})
    raw = {"ari": cluster_ari(train.x, train.y, super_semantic, s.seed),
           "probe": probe_accuracy(train.x, train.y, test.x, test.y, num_sub)}
    rows, curves = [], {"ari": {}, "probe": {}, "super train acc": {}}
    for merge, super_of in merges.items():
        torch.manual_seed(s.seed)
        model = Classifier(mlp(train.x.shape[1], 512, 256), build_head("softmax", num_super, 256))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        gen = s.generator(4)
        for epoch in range(epochs + 1):
            if epoch:
                train_epoch(model, opt, train.x, super_of[train.y], 256, gen)
            if epoch not in checkpoints:
                continue
            h = model.features(train.x)
            row = {"merge": merge, "epoch": epoch,
                   "super train acc": float((model.topk(train.x, 1)[:, 0] == super_of[train.y]).float().mean()),
                   "ari": cluster_ari(h, train.y, super_of, s.seed),
                   "probe": probe_accuracy(h, train.y, model.features(test.x), test.y, num_sub)}
            rows.append(row)
            for metric, series in curves.items():
                xs, ys = series.setdefault(merge, ([], []))
                xs.append(epoch)
                ys.append(row[metric])
    rows.append({"merge": "input tf-idf (no training)", "epoch": "-", "super train acc": "-",
                 **raw})
    figures = [plot_series(series, s.figures / f"{metric.replace(' ', '_')}.png", ylabel=metric,
                           title=f"{num_sub} full codes in {num_super} super-classes") for metric, series in curves.items()]
    return Report(CLAIM, ["merge", "epoch", "super train acc", "ari", "probe"], rows, figures,
                  params={"sub_labels": num_sub, "super_classes": num_super, "train_rows": len(train.x),
                          "test_rows": len(test.x), "features": train.x.shape[1], "epochs": epochs, "min_rows": MIN_ROWS},
                  notes=["'ari' on training features, 'probe' = nearest-class-mean sub-label accuracy on the test rows; the input row's "
                         "ARI uses the category merge.", "Chance ARI is 0."])
