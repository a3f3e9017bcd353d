"""`decomposition`: does it matter which label ids share an MHE head digit / MHC group?

MHE (TPAMI 2025, Part 6, README LC vs LRD): label ids in data order, randomly permuted, or clustered so that
similar labels share a head-1 digit (label clustering, LC), train to about the same accuracy once the backbone
is strong enough. Here: MHP (2 heads, L1 x L2) and MHC (groups of L2) on ICD-10-CM (single-label, 3-character
categories) and MHC on a synthetic multi-label set, with ids (a) as the dataset numbers them, (b) randomly
permuted, (c) ordered by a balanced spherical k-means (FAISS) of PIFA label centroids into ceil(C / L2)
clusters, so each digit / group block holds one cluster. A softmax head (order-invariant) is the reference.
ICD-10-CM is cut to its most frequent categories (40 tiny, 200 default), so each has rows enough to learn from.
"""

from __future__ import annotations

import math

import torch

from xlc.baselines.tree import cluster_unit_rows, pifa
from xlc.heads import build_head
from xlc.plots import plot_grouped_bars
from xlc.repro._common import FIT, Report, Setting, fit_and_score
from xlc.repro._data import Split, built, dense_splits, most_frequent, relabel

EPOCHS = {"tiny": 4, "default": 6}
CLAIM = ("MHE Part 6 / README (LC vs LRD): random relabelling with an arbitrary decomposition matches label "
         "clustering once the backbone is strong enough.")


def orderings(train: Split, num_labels: int, block: int, seed: int) -> dict[str, torch.Tensor]:
    """new id of each label under each ordering."""
    g = torch.Generator().manual_seed(seed)
    centroids = torch.from_numpy(pifa(train.x, train.y, num_labels, max_dim=train.x.shape[1], seed=seed))
    cluster = cluster_unit_rows(centroids, math.ceil(num_labels / block), seed)  # [C]
    by_cluster = torch.argsort(cluster * num_labels + torch.arange(num_labels))  # labels, cluster by cluster
    clustered = torch.empty(num_labels, dtype=torch.long)
    clustered[by_cluster] = torch.arange(num_labels)
    return {"data": torch.arange(num_labels), "random": torch.randperm(num_labels, generator=g), "clustered": clustered}


def run(s: Setting) -> Report:
    dim = s.pick(256, 512)
    sets = [("icd10cm", built(s.data_cache, "icd10cm", max_samples=s.pick(10000, 0))),
            ("synthetic multi-label", built(s.data_cache, "synthetic", samples=s.pick(3000, 10000),
                                            labels=s.pick(100, 500), labels_per_sample=3, features=5000,
                                            seed=s.seed))]
    rows = []
    for data_name, directory in sets:
        train, test, num_labels = dense_splits(directory, dim, s.seed)
        single = train.y.dim() == 1
        if single:
            train, test, num_labels = most_frequent(train, test, s.pick(40, 200))
        sizes = build_head("mhp", num_labels, 8, num_heads=2).codec.sizes
        heads = [("softmax", {}), *([("mhp", {"num_heads": 2})] if single else []),
                 ("mhc", {"group_size": sizes[1], "multi_label": not single})]
        for ordering, new_ids in orderings(train, num_labels, sizes[1], s.seed).items():
            for name, options in heads:
                if name == "softmax" and ordering != "data":
                    continue  # a softmax does not see the ids' order
                scores = fit_and_score(s, name, options, relabel(train, new_ids), relabel(test, new_ids), num_labels,
                                       epochs=EPOCHS[s.size])
                rows.append({"dataset": data_name, "labels": num_labels, "head": name,
                             "ordering": "any" if name == "softmax" else ordering, **scores})
    groups: dict[str, dict[str, float]] = {}
    for row in rows:
        groups.setdefault(f"{row['dataset']}\n{row['head']}", {})[row["ordering"]] = row["p@1"]
    figure = plot_grouped_bars(groups, s.figures / "p1_by_ordering.png", ylabel="test P@1",
                               title="label ids: data order, random, clustered")
    return Report(CLAIM, ["dataset", "labels", "head", "ordering", "p@1", "p@5"], rows, [figure],
                  params={"features": dim, "epochs": EPOCHS[s.size], **FIT},
                  notes=["ICD-10-CM ids are the sorted codes, so 'data' order already groups codes of one chapter; "
                         "the synthetic generator numbers labels randomly, so there 'data' is a random order too.",
                         "MHP is single-label only (it warns on multi-label data), so the multi-label set has MHC alone."])
