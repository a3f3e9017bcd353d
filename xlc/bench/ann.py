"""ANN top-k over a trained full-classifier head: FAISS (HNSW) over the classifier rows against exact
chunked top-k, on the run's own test features. Prints recall@k, P@k both ways and the speedup.

    xlc bench ann RUN_ID_OR_CHECKPOINT [--k 5] [--queries 4096] [--index hnsw] [--ef-search 128]
"""

from __future__ import annotations

import argparse
import json

import torch

from xlc import data as xdata
from xlc.baselines.ann import ANNTopK, ann_recall
from xlc.errors import ConfigError
from xlc.eval.metrics import precision_at_k
from xlc.heads._chunked import chunked_topk
from xlc.train.offline import checkpoint_of, load_checkpoint


def run(ref: str, *, uri: str | None, k: int, queries: int, index: str, ef_search: int) -> dict:
    with checkpoint_of(ref, uri) as directory:
        model, head, _, data_dir = load_checkpoint(directory)
    weight = getattr(head, "weight", None)
    if weight is None or tuple(weight.shape) != (head.num_labels, head.in_dim):
        raise ConfigError(f"{ref}: ANN top-k needs a full linear classifier head (softmax family, bce, mhs); "
                          f"this run's head is {type(head).__name__}")
    features, truth = [], []
    with torch.no_grad():
        for batch in xdata.iter_batches(data_dir, "test", 1024):
            features.append(model(batch))
            truth.append(batch.targets.reshape(len(batch), -1))
            if sum(len(f) for f in features) >= queries:
                break
    h = torch.cat(features)[:queries]  # [Q, d]
    width = max(t.shape[1] for t in truth)
    y = torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=-1) for t in truth])[:queries]
    ann = ANNTopK(weight, getattr(head, "bias", None), index=index, ef_search=ef_search)
    ann.topk(h[:8], k)  # warm-up
    report = ann_recall(ann, h, k)
    _, approx = ann.topk(h, k)
    _, exact = chunked_topk(h, ann.weight, ann.bias, k)
    report.update({"queries": len(h), "labels": head.num_labels, f"p@{k} ann": precision_at_k(approx, y, k),
                   f"p@{k} exact": precision_at_k(exact, y, k)})
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="xlc bench ann", description=__doc__.split("\n\n")[0])
    parser.add_argument("ref", help="MLflow run id or checkpoint directory of a full-classifier run")
    parser.add_argument("--uri", default=None, help="tracking URI (default: ./xlc-runs/)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--queries", type=int, default=4096)
    parser.add_argument("--index", default="hnsw", choices=["hnsw", "flat"])
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = run(args.ref, uri=args.uri, k=args.k, queries=args.queries, index=args.index, ef_search=args.ef_search)
    if args.json:
        print(json.dumps(report))
    else:
        print("| " + " | ".join(report) + " |\n|" + "---|" * len(report))
        print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in report.values()) + " |")
