"""The peer XMC libraries as `xlc compare` baselines: napkinXC (PLT, BR, OVR) and PECOS XR-Linear.

Each fits on a dataset directory's training split and is scored on its test split by the metrics knn
reports (`split.ranking_metrics`). Features reach the libraries as a scipy CSR matrix read straight from
Parquet, never densified, with rows L2-normalised: tf-idf rows of unit length are what both libraries'
papers and defaults assume (napkinXC's own `norm=True` then changes nothing). Labels go in as lists of ids
(napkinXC) or a float32 0/1 CSR [N, L] (PECOS). PECOS's XR-Transformer, which fine-tunes a text encoder,
is out of scope: only XR-Linear (PIFA label features, hierarchical k-means tree, linear rankers).
Both libraries are optional: the `peers` extra, `pip install 'xlc[peers]'`.
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.preprocessing import normalize

from xlc.baselines.split import ranking_metrics, read_split, truth
from xlc.errors import ConfigError

# baseline -> (import name, PyPI distribution)
LIBRARIES = {"napkinxc": ("napkinxc", "napkinxc"), "pecos": ("pecos", "libpecos")}


def require(baseline: str):
    """Import the baseline's library, or a one-line ConfigError naming the extra that installs it."""
    module, dist = LIBRARIES[baseline]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"baseline {baseline!r} needs the PyPI package {dist} (import {module}), which the peers "
                          f"extra installs: pip install 'xlc[peers]'") from None


@dataclass(frozen=True)
class Option:
    """One option passed through to a library; its type is the default's (an int is accepted for a float)."""

    default: Any
    choices: tuple = ()  # the allowed values, if only some are
    minimum: float | None = None  # the smallest allowed value
    positive: bool = False  # the value must be > 0
    models: tuple = ()  # napkinXC models the option applies to; () = every model

    def problem(self, value) -> str | None:
        kind = type(self.default)
        numeric = kind is float and isinstance(value, int)
        if isinstance(value, bool) != (kind is bool) or not (isinstance(value, kind) or numeric):
            return f"expected {kind.__name__}"
        if self.choices and value not in self.choices:
            return f"expected one of {', '.join(map(str, self.choices))}"
        if self.minimum is not None and value < self.minimum:
            return f"expected >= {self.minimum}"
        if self.positive and value <= 0:
            return "expected > 0"
        return None


PLT = ("PLT",)
# napkinXC's own names and defaults; threads 0 = all cores
NAPKINXC_OPTIONS = {
    "model": Option("PLT", choices=("PLT", "BR", "OVR")),
    "threads": Option(0, minimum=0),
    "tree_type": Option("hierarchicalKmeans", models=PLT, choices=(
        "hierarchicalKmeans", "balancedInOrder", "balancedRandom", "completeKaryInOrder", "completeKaryRandom", "huffman")),
    "arity": Option(2, minimum=2, models=PLT),  # children per node (k of the k-means)
    "max_leaves": Option(100, minimum=1, models=PLT),  # labels under one pre-leaf node
    "kmeans_balanced": Option(True, models=PLT),
    "ensemble": Option(1, minimum=1, models=PLT),  # trees averaged
    "loss": Option("log", choices=("log", "l2")),  # node classifiers: logistic or squared hinge
    "liblinear_c": Option(10.0, positive=True),
    "liblinear_eps": Option(0.1, positive=True),
    "weights_threshold": Option(0.1, minimum=0),  # weights below it are pruned (model size)
}
# PECOS XR-Linear; C is LIBLINEAR's cost for positives and negatives (Cp = Cn); threads 0 = all cores
PECOS_OPTIONS = {
    "nr_splits": Option(16, minimum=2),  # children per tree node
    "max_leaf_size": Option(100, minimum=1),  # labels in one leaf cluster
    "beam_size": Option(10, minimum=1),  # clusters kept per level at prediction
    "C": Option(1.0, positive=True),
    "threshold": Option(0.1, minimum=0),  # weights below it are pruned (model size)
    "solver_type": Option("L2R_L2LOSS_SVC_DUAL", choices=("L2R_L2LOSS_SVC_DUAL", "L2R_L1LOSS_SVC_DUAL", "L2R_LR_DUAL")),
    "threads": Option(0, minimum=0),
}
OPTIONS = {"napkinxc": NAPKINXC_OPTIONS, "pecos": PECOS_OPTIONS}


def check_options(baseline: str, options: dict, key: str = "options") -> dict:
    """The baseline's options resolved over its defaults (napkinXC: only those of the chosen model); one
    ConfigError naming every bad `key.option`, its value and what is allowed."""
    spec = OPTIONS[baseline]
    errors = []
    for name, value in options.items():
        if name not in spec:
            errors.append(f"{key}.{name}: not a {baseline} option; allowed: {', '.join(sorted(spec))}")
        elif (problem := spec[name].problem(value)) is not None:
            errors.append(f"{key}.{name}={value!r}: {problem}")
    model = options.get("model", "PLT")  # napkinXC's (PECOS has none); an invalid one is reported above
    for name in options if "model" in spec and spec["model"].problem(model) is None else ():
        if name in spec and spec[name].models and model not in spec[name].models:
            errors.append(f"{key}.{name}: an option of model {'/'.join(spec[name].models)} only, not {model!r}")
    if errors:
        raise ConfigError("; ".join(errors))
    return {name: options.get(name, opt.default) for name, opt in spec.items() if not opt.models or model in opt.models}


class NapkinXC:
    """napkinXC's PLT (probabilistic label tree), BR (binary relevance: one logistic/hinge classifier per
    label) or OVR (one-vs-rest, its multi-class reduction), node/label classifiers trained by LIBLINEAR;
    napkinXC writes the model into `model_dir` as it trains."""

    def __init__(self, options: dict, seed: int):
        require("napkinxc")
        from napkinxc import models

        self.cls = getattr(models, options["model"])
        self.kwargs = {k: v for k, v in options.items() if k != "model"}
        if options["model"] == "PLT":
            self.kwargs["seed"] = seed

    def fit(self, x: sp.csr_matrix, y: sp.csr_matrix, model_dir: str) -> None:
        labels = np.split(y.indices.astype(int), y.indptr[1:-1])  # [N] arrays of label ids
        self.model = self.cls(model_dir, **self.kwargs)
        self.model.fit(x, [row.tolist() for row in labels])

    def predict(self, x: sp.csr_matrix, k: int) -> torch.Tensor:
        return _padded(self.model.predict(x, top_k=k), k)


class PecosXRLinear:
    """PECOS XR-Linear: PIFA label embeddings (each label's training rows summed, L2-normalised), a hierarchical
    k-means label tree, one linear ranker per tree level, beam search at prediction."""

    def __init__(self, options: dict, seed: int):
        require("pecos")
        from xlc.baselines import _pecos_compat

        _pecos_compat.patch()
        self.options, self.seed = options, seed
        self.threads = options["threads"] or -1  # PECOS: -1 = all cores

    def fit(self, x: sp.csr_matrix, y: sp.csr_matrix, model_dir: str) -> None:
        from pecos.xmc import Indexer, LabelEmbeddingFactory
        from pecos.xmc.xlinear.model import XLinearModel

        o = self.options
        emb = LabelEmbeddingFactory.create(y, x, method="pifa")  # [L, D] CSR
        chain = Indexer.gen(emb, indexer_type="hierarchicalkmeans", nr_splits=o["nr_splits"],
                            max_leaf_size=o["max_leaf_size"], seed=self.seed, threads=self.threads)
        self.model = XLinearModel.train(x, y, C=chain, nr_splits=o["nr_splits"], Cp=o["C"], Cn=o["C"],
                                        threshold=o["threshold"], solver_type=o["solver_type"], threads=self.threads)
        self.model.save(model_dir)

    def predict(self, x: sp.csr_matrix, k: int) -> torch.Tensor:
        scores = sp.csr_matrix(self.model.predict(x, only_topk=k, beam_size=self.options["beam_size"],
                                                  threads=self.threads))  # [N, L], <= k stored entries a row
        rows = np.repeat(np.arange(scores.shape[0]), np.diff(scores.indptr))  # [nnz]
        order = np.lexsort((-scores.data, rows))  # by row, then score descending
        rank = np.arange(len(order)) - scores.indptr[rows[order]]  # position within the row
        out = torch.full((scores.shape[0], k), -1, dtype=torch.long)
        out[rows[order], rank] = torch.from_numpy(scores.indices[order].astype(np.int64))
        return out


PEERS = {"napkinxc": NapkinXC, "pecos": PecosXRLinear}


def _padded(rows, k: int) -> torch.Tensor:
    """Ranked label lists (napkinXC may return fewer than k) as LongTensor [N, k] padded with -1 (a miss)."""
    out = torch.full((len(rows), k), -1, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.as_tensor(row[:k], dtype=torch.long)
    return out


@dataclass
class PeerRun:
    pred: torch.Tensor  # [N_test, k] ranked labels, -1 padded
    truth: torch.Tensor  # [N_test, M] true labels, -1 padded
    train_seconds: float  # read the training split + normalise + fit
    fit_seconds: float  # the library's fit alone (PECOS: PIFA + tree + rankers)
    predict_seconds: float  # the library's predict over the test split (read before the clock starts)
    model_bytes: int  # size of the saved model directory
    num_train: int


def fit_predict(baseline: str, data_dir: str, options: dict, k: int, seed: int = 0) -> PeerRun:
    """Fit the peer on the training split, predict the top k of every test row."""
    peer = PEERS[baseline](check_options(baseline, options), seed)
    tic = time.perf_counter()
    x, y = read_split(data_dir, "train", baseline)
    x = normalize(x, norm="l2", copy=False)  # rows of unit length, in place; all-zero rows stay zero
    model_dir = tempfile.mkdtemp(prefix=f"xlc-{baseline}-")
    try:
        fit_tic = time.perf_counter()
        peer.fit(x, y, model_dir)
        done = time.perf_counter()
        model_bytes = sum(p.stat().st_size for p in Path(model_dir).rglob("*") if p.is_file())
        x_test, y_test = read_split(data_dir, "test", baseline)
        x_test = normalize(x_test, norm="l2", copy=False)
        predict_tic = time.perf_counter()
        pred = peer.predict(x_test, k)
        predict_seconds = time.perf_counter() - predict_tic
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
    return PeerRun(pred, truth(y_test), done - tic, done - fit_tic, predict_seconds, model_bytes, x.shape[0])


def score(run: PeerRun, data_dir: str, ks, psp_a: float, psp_b: float) -> dict[str, float]:
    """xlc's metrics of a peer's predictions, plus its timings and model size."""
    metrics = ranking_metrics(data_dir, ks, psp_a, psp_b)
    metrics.update(run.pred, run.truth)
    out = metrics.compute()
    out.update(train_seconds=run.train_seconds, fit_seconds=run.fit_seconds, predict_seconds=run.predict_seconds,
               samples_per_second=run.num_train / max(run.train_seconds, 1e-9), model_bytes=float(run.model_bytes))
    return out


def evaluate_peer(baseline: str, data_dir: str, *, ks=(1, 3, 5), psp_a: float = 0.55, psp_b: float = 1.5,
                  seed: int = 0, **options) -> dict[str, float]:
    """A peer baseline on a sparse dataset directory: ranking metrics, timings and model bytes."""
    return score(fit_predict(baseline, data_dir, options, max(ks), seed), data_dir, ks, psp_a, psp_b)


def library_version(baseline: str) -> str:
    return metadata.version(LIBRARIES[baseline][1])
