"""MHS: the sampled union, CE over exactly that union (float64 reference), exact top-k, training."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close
from xlc.errors import ConfigError
from xlc.heads import build_head
from xlc.heads.mhs import MHSHead


def _head(num_labels=23, in_dim=5, group_size=4, sampled_groups=2, **options):
    torch.manual_seed(0)
    head = MHSHead(num_labels, in_dim, group_size=group_size, sampled_groups=sampled_groups, **options).double()
    with torch.no_grad():
        head.bias.normal_()
    return head


def test_sample_groups_holds_true_groups_plus_uniform_negatives():
    head = _head(num_labels=100, group_size=5, sampled_groups=3)  # 20 groups
    t = torch.tensor([[3, 47], [99, -1], [4, -1]])
    seen = set()
    for seed in range(40):
        torch.manual_seed(seed)
        groups = head.sample_groups(t).tolist()
        assert groups == sorted(set(groups)) and len(groups) == 3 + 3
        assert {0, 9, 19} <= set(groups)
        seen |= set(groups) - {0, 9, 19}
    assert seen == set(range(20)) - {0, 9, 19}  # every other group gets drawn


@pytest.mark.parametrize(
    "targets,reduction",
    [
        (torch.tensor([22, 0, 13, 21]), "pal_mean"),
        (torch.tensor([[22, 1, -1], [0, -1, -1], [-1, -1, -1], [5, 5, 9]]), "pal_mean"),
        (torch.tensor([[22, 1, -1], [0, -1, -1], [-1, -1, -1], [5, 5, 9]]), "pal_sum"),
    ],
)
def test_loss_is_float64_ce_over_exactly_the_sampled_union(targets, reduction):
    """L = mean_i sum_{y in S_i} w_i -(z_iy - log sum_{c in U} exp z_ic), U = labels of the sampled groups."""
    head = _head(multi_label_loss=reduction)
    x = torch.randn(4, 5, dtype=torch.float64)
    torch.manual_seed(7)
    groups = head.sample_groups(targets).tolist()
    torch.manual_seed(7)
    loss = head.loss(x, targets)
    union = [c for g in groups for c in range(4 * g, 4 * g + 4) if c < 23]
    expected = 0.0
    for i, row in enumerate(targets.view(4, -1).tolist()):
        positives = sorted({c for c in row if c >= 0})
        z = torch.stack([head.weight[c] @ x[i] + head.bias[c] for c in union])
        for y in positives:
            weight = 1 / len(positives) if reduction == "pal_mean" else 1.0
            expected += -weight * (z[union.index(y)] - z.logsumexp(0))
    assert_close(loss, expected / 4, atol=1e-12, rtol=1e-12)


def test_gradcheck():
    head = _head()
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([3, 22, 9, 10])

    def fn(f):
        torch.manual_seed(0)  # the same union at every evaluation
        return head.loss(f, t)

    assert torch.autograd.gradcheck(fn, (x,))


@pytest.mark.parametrize("k", [1, 4, 23])
def test_topk_equals_brute_force(k):
    head = _head(chunk=5)
    x = torch.randn(6, 5, dtype=torch.float64)
    scores, labels = head.topk(x, k)
    ref_scores, ref_labels = (x @ head.weight.T + head.bias).sort(dim=1, descending=True)
    assert_close(scores, ref_scores[:, :k], atol=1e-12, rtol=1e-12)
    assert torch.equal(labels, ref_labels[:, :k])


def test_state_dict_loads_into_chunked_softmax():
    head = _head()
    softmax = build_head("chunked_softmax", 23, 5).double()
    softmax.load_state_dict(head.state_dict())
    x = torch.randn(3, 5, dtype=torch.float64)
    assert torch.equal(softmax.topk(x, 5)[1], head.topk(x, 5)[1])


def test_option_errors():
    with pytest.raises(ConfigError, match="sampled_groups=-1"):
        build_head("mhs", 100, 8, sampled_groups=-1)
    with pytest.raises(ConfigError, match="multi_label_loss='avg'"):
        build_head("mhs", 100, 8, multi_label_loss="avg")
    with pytest.raises(ConfigError, match="k=0"):
        _head().topk(torch.randn(1, 5, dtype=torch.float64), 0)


def test_tiny_training_reaches_high_train_accuracy():
    torch.manual_seed(0)
    num_labels, dim = 100, 16
    centres = torch.randn(num_labels, dim)
    y = torch.arange(num_labels).repeat(3)  # [300]
    x = centres[y] + 0.05 * torch.randn(len(y), dim)
    head = MHSHead(num_labels, dim, group_size=10, sampled_groups=2)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for step in range(60):
        batch = torch.randperm(len(y))[:64]  # the union changes with the batch
        opt.zero_grad()
        head.loss(x[batch], y[batch]).backward()
        opt.step()
    _, pred = head.topk(x, 1)
    assert (pred[:, 0] == y).float().mean() >= 0.95
