"""MHC: teacher forcing, inserted true labels, gathered rows only, loss and scores against plain references."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close
from xlc.errors import ConfigError, DataError
from xlc.heads import build_head
from xlc.heads import mhc
from xlc.heads._chunked import row_dot
from xlc.heads.mhc import MHCHead


def _head(num_labels=23, in_dim=6, group_size=4, hidden=5, candidates=2, **options):
    torch.manual_seed(0)
    return MHCHead(num_labels, in_dim, group_size=group_size, hidden=hidden, candidates=candidates, **options).double()


def test_groups_are_contiguous_and_the_last_is_padded():
    head = _head()  # 23 labels in groups of 4: 6 groups, the last holds 20, 21, 22 and one pad
    assert (head.num_groups, head.group_size) == (6, 4)
    assert head.group_labels(torch.tensor([[5, 0]])).tolist() == [[20, 21, 22, 23, 0, 1, 2, 3]]
    assert head.table.weight.shape == (24, 5)


def test_teacher_forcing_selects_every_true_group():
    head = _head(candidates=3)
    g = torch.zeros(2, 6, dtype=torch.float64)
    g[:, [1, 2, 3]] = 20.0  # wrong groups score highest; true groups 0 and 5 (row 0), 4 (row 1) lowest
    g[:, [0, 4, 5]] = -20.0
    t = torch.tensor([[1, 21], [17, -1]])
    labels = head.training_candidates(g, t)  # [B, 3 * 4]
    groups = [set((row // 4).tolist()) for row in labels]
    assert {0, 5} <= groups[0] and {4} <= groups[1]
    assert len(groups[1] & {1, 2, 3}) == 2  # the other slots are the hardest negatives


def test_true_labels_are_inserted_when_there_are_more_true_groups_than_k():
    head = _head(candidates=2)
    t = torch.tensor([[0, 5, 9, 13, 22], [3, -1, -1, -1, -1]])
    g = torch.randn(2, 6, dtype=torch.float64)
    labels = head.training_candidates(g, t)
    for row, positives in zip(labels.tolist(), [[0, 5, 9, 13, 22], [3]]):
        assert set(positives) <= set(row)
        real = [c for c in row if c < 23]
        assert len(real) == len(set(real))  # no label twice
    # a row with more positives than slots keeps as many as fit, all real and distinct
    crowded = torch.arange(10).repeat(1, 1)
    row = head.training_candidates(torch.randn(1, 6, dtype=torch.float64), crowded)[0].tolist()
    assert len(set(row) & set(range(10))) == 8 and len(set(row)) == 8


def test_multi_label_loss_matches_float64_reference():
    """L = sum_c r_c BCE(E[c].e, 1[c in y]) / sum_c r_c + mean_j BCE(g_j, 1[j in groups(y)]), r_c = not padding."""
    head = _head(candidates=2)
    x = torch.randn(3, 6, dtype=torch.float64)
    t = torch.tensor([[0, 5, 9, 22], [3, -1, -1, -1], [-1, -1, -1, -1]])
    loss = head.loss(x, t)
    g, e = head.group_head(x), head.proj(x)
    labels = head.training_candidates(g, t.sort(1).values)
    positives = [{0, 5, 9, 22}, {3}, set()]

    def bce(z, y):
        return -(y * torch.log(torch.sigmoid(z)) + (1 - y) * torch.log(1 - torch.sigmoid(z)))

    total, count = 0.0, 0
    for i in range(3):
        for c in labels[i].tolist():
            if c < 23:
                total += bce(head.table.weight[c] @ e[i], float(c in positives[i]))
                count += 1
    group_hot = torch.tensor([[float(j in {p // 4 for p in positives[i]}) for j in range(6)] for i in range(3)])
    expected = total / count + bce(g, group_hot.double()).mean()
    assert_close(loss, expected, atol=1e-12, rtol=1e-12)


def test_single_label_loss_matches_float64_reference():
    """L = mean_i [ -log softmax(E[group(y)].e)[y mod per] - log softmax(g)[group(y)] ], padded slot excluded."""
    head = _head(multi_label=False)
    x = torch.randn(4, 6, dtype=torch.float64)
    y = torch.tensor([22, 0, 13, 20])
    g, e = head.group_head(x), head.proj(x)
    expected = 0.0
    for i, label in enumerate(y.tolist()):
        members = [c for c in range(label // 4 * 4, label // 4 * 4 + 4) if c < 23]
        z = torch.stack([head.table.weight[c] @ e[i] for c in members])
        expected += -(z[members.index(label)] - z.logsumexp(0)) - (g[i, label // 4] - g[i].logsumexp(0))
    assert_close(head.loss(x, y), expected / 4, atol=1e-12, rtol=1e-12)
    with pytest.raises(DataError, match="multi_label=false"):
        head.loss(x, y[:, None])


@pytest.mark.parametrize("multi_label", [True, False])
def test_gradcheck(multi_label):
    head = _head(num_labels=10, group_size=3, hidden=3, multi_label=multi_label)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0, 7], [9, -1], [4, 5], [2, 3]]) if multi_label else torch.tensor([0, 9, 4, 2])
    assert torch.autograd.gradcheck(lambda f: head.loss(f, t), (x,))


def test_only_candidate_rows_of_the_table_are_gathered(monkeypatch):
    num_labels, batch = 300_000, 3
    head = MHCHead(num_labels, 8, group_size=50, hidden=4, candidates=2)
    gathered = []

    def counted(table, x, labels):
        gathered.append(labels.numel())
        return row_dot(table, x, labels)

    monkeypatch.setattr(mhc, "row_dot", counted)
    x, t = torch.randn(batch, 8), torch.tensor([[7, 250_000, 299_999], [1, -1, -1], [123_456, 5, -1]])
    head.loss(x, t).backward()
    head.topk(x, 5)
    assert gathered == [batch * 2 * 50, batch * 2 * 50]
    touched = (head.table.weight.grad != 0).any(1).sum().item()
    assert 0 < touched <= batch * 2 * 50


@pytest.mark.parametrize("k", [1, 5, 12])
def test_topk_scores_are_sigmoid_products_over_top_groups(k):
    head = _head(candidates=2)
    x = torch.randn(5, 6, dtype=torch.float64)
    scores, labels = head.topk(x, k)
    g, e = head.group_head(x), head.proj(x)
    for i in range(5):
        num = max(2, -(-k // 4) + 1)
        groups = torch.sigmoid(g[i]).topk(num).indices.tolist()
        pool = {c: (torch.sigmoid(head.table.weight[c] @ e[i]) * torch.sigmoid(g[i, c // 4])).item()
                for grp in groups for c in range(4 * grp, 4 * grp + 4) if c < 23}
        best = sorted(pool, key=lambda c: -pool[c])[:k]
        assert labels[i].tolist() == best
        assert_close(scores[i], torch.tensor([pool[c] for c in best], dtype=torch.float64), atol=1e-12, rtol=1e-12)


def test_topk_single_label_is_group_times_local_softmax():
    head = _head(multi_label=False, candidates=1)
    x = torch.randn(4, 6, dtype=torch.float64)
    scores, labels = head.topk(x, 1)
    g, e = head.group_head(x), head.proj(x)
    for i in range(4):
        grp = g[i].argmax().item()
        members = [c for c in range(4 * grp, 4 * grp + 4) if c < 23]
        z = torch.stack([head.table.weight[c] @ e[i] for c in members])
        assert labels[i, 0].item() == members[z.argmax().item()]
        assert_close(scores[i, 0], g[i].softmax(0)[grp] * z.softmax(0).max(), atol=1e-12, rtol=1e-12)


def test_topk_never_returns_padding_or_duplicates():
    head = _head(num_labels=21, group_size=4, candidates=6)  # last group: 20 + 3 pads
    with torch.no_grad():
        head.table.weight[21:] = 100.0  # padding rows would win if they were scored
    x = torch.randn(8, 6, dtype=torch.float64)
    _, labels = head.topk(x, 21)
    assert (labels < 21).all()
    assert all(len(set(row)) == 21 for row in labels.tolist())


def test_option_errors():
    assert build_head("mhc", 1000, 8, num_groups=50).group_size == 20
    with pytest.raises(ConfigError, match="candidates=0"):
        build_head("mhc", 1000, 8, candidates=0)
    with pytest.raises(ConfigError, match="give one of them"):
        build_head("mhc", 1000, 8, num_groups=10, group_size=10)
    with pytest.raises(ConfigError, match="k=30"):
        _head().topk(torch.randn(1, 6, dtype=torch.float64), 30)


def test_tiny_multi_label_training_reaches_high_precision():
    torch.manual_seed(0)
    num_labels, dim, n = 200, 16, 200
    label_vecs = torch.randn(num_labels, dim)
    t = torch.randint(0, num_labels, (n, 3))  # 3 labels per sample
    x = label_vecs[t].sum(1) + 0.05 * torch.randn(n, dim)
    backbone = torch.nn.Sequential(torch.nn.Linear(dim, 64), torch.nn.ReLU())
    head = MHCHead(num_labels, 64, group_size=10, hidden=32, candidates=5)
    opt = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=0.02)
    for _ in range(60):
        opt.zero_grad()
        head.loss(backbone(x), t).backward()
        opt.step()
    _, pred = head.topk(backbone(x), 1)
    p_at_1 = (pred == t).any(1).float().mean()
    assert p_at_1 >= 0.9


def test_tiny_single_label_training_reaches_high_accuracy():
    torch.manual_seed(0)
    num_labels, dim = 60, 16
    centres = torch.randn(num_labels, dim)
    y = torch.arange(num_labels).repeat(5)
    x = centres[y] + 0.05 * torch.randn(len(y), dim)
    backbone = torch.nn.Sequential(torch.nn.Linear(dim, 64), torch.nn.ReLU())
    head = MHCHead(num_labels, 64, num_groups=8, hidden=32, multi_label=False)
    opt = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        head.loss(backbone(x), y).backward()
        opt.step()
    _, pred = head.topk(backbone(x), 1)
    assert (pred[:, 0] == y).float().mean() >= 0.95
