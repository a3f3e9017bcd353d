"""The head contract of `xlc.heads`, checked for every entry of `HEADS` (a new head is covered by adding it there).

Head: scalar finite loss with gradients to the features and parameters; topk gives descending scores and
distinct valid labels, k = num_labels included. ShardedHead: `label_sharded` entries hold rows
[label_start, label_end); an empty batch is a valid call. FittedHead: `fit_inputs` returns constructor
inputs that survive `torch.load(weights_only=True)`. Every head builds on the meta device (the config check).
"""

from __future__ import annotations

import io

import pytest
import torch

from xlc.errors import XlcError
from xlc.heads import HEADS, FittedHead, Head, ShardedHead, TrainingSplit, build_head, fit_head_inputs

NUM_LABELS, IN_DIM, K = 37, 40, 5  # in_dim >= num_labels - 1 so that `etf` (a simplex ETF) exists


def features(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, IN_DIM, generator=torch.Generator().manual_seed(seed))


def targets(kind: str, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if kind == "single":
        return torch.randint(0, NUM_LABELS, (n,), generator=g)
    t = torch.randint(0, NUM_LABELS, (n, 3), generator=g)
    t[::3, 1:] = -1  # rows with one label and rows with none
    t[1::5] = -1
    return t


@pytest.fixture(params=sorted(HEADS))
def name(request) -> str:
    return request.param


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_loss_is_a_differentiable_scalar(name, kind):
    head = build_head(name, NUM_LABELS, IN_DIM)
    assert isinstance(head, Head)
    x = features(12).requires_grad_()
    try:
        loss = head.loss(x, targets(kind, 12))
    except XlcError as e:  # a head may refuse multi-label targets, but only with a user error naming them
        assert kind == "multi" and "label" in str(e), e
        return
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    trained = [p for p in head.parameters() if p.requires_grad]
    assert not trained or any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)


@pytest.mark.parametrize("k", [1, K, NUM_LABELS])
def test_topk_gives_distinct_valid_labels_in_descending_order(name, k):
    head = build_head(name, NUM_LABELS, IN_DIM)
    with torch.no_grad():
        scores, labels = head.topk(features(9, seed=2), k)
    assert scores.shape == labels.shape == (9, k)
    assert labels.dtype == torch.long and labels.min() >= 0 and labels.max() < NUM_LABELS
    assert all(len(set(row)) == k for row in labels.tolist())
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_sharded_heads_keep_their_label_range_and_take_empty_batches(name):
    head = build_head(name, NUM_LABELS, IN_DIM)
    if not isinstance(head, ShardedHead):
        assert head.__class__.__name__.find("Sharded") < 0  # a replicated head: nothing more to check
        return
    assert head.process_group is None  # one process: no collectives
    assert (head.label_start, head.label_end) == (0, NUM_LABELS)
    state = head.state_dict()
    for key in head.label_sharded:
        if state.get(key) is not None:
            assert state[key].shape[0] == head.label_end - head.label_start, key
    scores, labels = head.topk(torch.zeros(0, IN_DIM), K)
    assert scores.shape == labels.shape == (0, K)


def test_fitted_heads_rebuild_from_their_saved_inputs(name):
    if not isinstance(HEADS[name], FittedHead):
        assert fit_head_inputs(name, None, {}) == {}
        return
    emb = torch.nn.functional.normalize(features(NUM_LABELS, seed=3), dim=1)  # [L, D] unit label embeddings

    def cluster(points: torch.Tensor, k: int, seed: int) -> torch.Tensor:  # contiguous balanced parts
        return torch.arange(len(points)) * k // len(points)

    inputs = fit_head_inputs(name, TrainingSplit(NUM_LABELS, 0, lambda: emb, cluster), {"branching": 3, "leaf_size": 4})
    assert inputs
    buffer = io.BytesIO()
    torch.save(inputs, buffer)
    restored = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    a = build_head(name, NUM_LABELS, IN_DIM, branching=3, leaf_size=4, **inputs)
    b = build_head(name, NUM_LABELS, IN_DIM, branching=3, leaf_size=4, **restored)
    b.load_state_dict(a.state_dict())
    x = features(4, seed=4)
    torch.testing.assert_close(a.topk(x, K), b.topk(x, K))


def test_every_head_builds_on_the_meta_device(name):
    """`xlc.train.model.check_model` validates option values this way, before Ray or MLflow start."""
    with torch.device("meta"):
        head = build_head(name, 10**6 if name != "etf" else NUM_LABELS, IN_DIM)
    assert any(p.is_meta for p in head.parameters())
