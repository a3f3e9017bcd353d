"""TreeHead: beam search equals brute-force path-score ranking when the beam covers every level; the per-level
BCE equals a float64 loop over the candidate sets; training separates synthetic data."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_close
from xlc.errors import ConfigError
from xlc.heads import build_head
from xlc.heads.tree import LabelHierarchy, TreeHead, contiguous_hierarchy, tree_depth


def test_contiguous_hierarchy_shape():
    h = contiguous_hierarchy(1000, branching=4, leaf_size=20)
    assert tree_depth(1000, 4, 20) == 3  # 4^3 * 20 = 1280 >= 1000 > 4^2 * 20
    assert [len(p) for p in h.parents] == [4, 16, 64]
    sizes = torch.bincount(h.label_to_leaf)
    assert sizes.min() >= 15 and sizes.max() <= 16  # balanced: 1000 / 64 = 15.6
    assert (h.parents[1] == torch.arange(16) // 4).all()


def test_beam_topk_equals_brute_force_when_wide():
    torch.manual_seed(0)
    head = build_head("tree", 300, 8, hierarchy=contiguous_hierarchy(300, 4, 10), beam=64).double()
    with torch.no_grad():
        for p in head.parameters():
            p.normal_()
    x = torch.randn(5, 8, dtype=torch.float64)
    full = head.path_log_scores(x)  # [5, 300]
    ref_s, ref_l = full.topk(7, dim=1)
    s, l = head.topk(x, 7)
    assert (l == ref_l).all()
    assert_close(s, ref_s.exp(), rtol=1e-12, atol=0)
    # a narrow beam is approximate but still returns k distinct valid labels in descending order
    head.beam = 1
    s1, l1 = head.topk(x, 7)
    assert all(len(set(r)) == 7 for r in l1.tolist()) and (l1 >= 0).all() and (l1 < 300).all()
    assert (s1[:, :-1] >= s1[:, 1:]).all()
    assert (s1 <= ref_s.exp()[:, :1] + 1e-12).all()


def test_topk_when_first_level_is_narrow():
    head = TreeHead(5, 3, hierarchy=LabelHierarchy([torch.zeros(2, dtype=torch.long)], torch.tensor([0, 0, 0, 1, 1])))
    s, l = head.topk(torch.randn(4, 3), 5)
    assert sorted(l[0].tolist()) == [0, 1, 2, 3, 4]


def test_loss_matches_float64_reference_tfn():
    """Reference: sum over levels t of mean_{(b, c) in cand_t} BCE(w_c.h_b + b_c, [c on b's true path]), with
    cand_0 = all level-0 nodes and cand_t = true nodes + children of the true level-(t-1) nodes."""
    torch.manual_seed(1)
    hier = contiguous_hierarchy(40, 3, 5)
    head = TreeHead(40, 6, hierarchy=hier, negatives="tfn").double()
    x = torch.randn(4, 6, dtype=torch.float64)
    y = torch.tensor([[3, 17, -1], [39, -1, -1], [-1, -1, -1], [5, 5, 6]])
    ups = list(hier.parents) + [hier.label_to_leaf]
    ref = 0.0
    for t in range(len(ups)):
        terms = []
        for b in range(4):
            path = {v for v in y[b].tolist() if v >= 0}
            for u in range(len(ups) - 1, t, -1):
                path = {int(ups[u][v]) for v in path}
            if t == 0:
                cand = set(range(len(ups[0])))
            else:
                parent_path = {int(ups[t][v]) for v in path}
                cand = path | {c for c in range(len(ups[t])) if int(ups[t][c]) in parent_path}
            for c in sorted(cand):
                z = head.weights[t][c] @ x[b] + head.biases[t][c]
                terms.append(F.binary_cross_entropy_with_logits(z, torch.tensor(float(c in path), dtype=torch.float64)))
        ref = ref + torch.stack(terms).mean()
    assert_close(head.loss(x, y), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("negatives", ["tfn+man", "tfn"])
def test_trains_on_separable_data(negatives):
    """Features follow the tree (as PIFA clustering arranges): cluster + leaf + label directions."""
    torch.manual_seed(2)
    num_labels, d = 200, 16
    hier = contiguous_hierarchy(num_labels, 8, 10)
    leaf = hier.label_to_leaf
    top = hier.parents[1][leaf]
    protos = F.normalize(torch.randn(8, d)[top] + 0.6 * torch.randn(len(hier.parents[1]), d)[leaf]
                         + 0.4 * torch.randn(num_labels, d), dim=1)
    head = build_head("tree", num_labels, d, hierarchy=hier, beam=8, negatives=negatives)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(200):
        y = torch.randint(0, num_labels, (128,))
        loss = head.loss(protos[y] + 0.05 * torch.randn(128, d), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    y = torch.arange(num_labels)
    _, pred = head.topk(protos[y] + 0.05 * torch.randn(num_labels, d), 5)
    assert (pred[:, 0] == y).float().mean() > 0.9
    assert (pred == y[:, None]).any(1).float().mean() > 0.97


def test_hierarchy_travels_in_state_dict():
    h = TreeHead(50, 4, hierarchy=contiguous_hierarchy(50, 3, 4))
    other = TreeHead(50, 4, hierarchy=contiguous_hierarchy(50, 3, 4))
    other.load_state_dict(h.state_dict())
    x = torch.randn(3, 4)
    assert (other.topk(x, 4)[1] == h.topk(x, 4)[1]).all()


def test_bad_options_name_the_field():
    with pytest.raises(ConfigError, match="head.negatives"):
        build_head("tree", 10, 4, negatives="hard")
    with pytest.raises(ConfigError, match="label_to_leaf"):
        TreeHead(10, 4, hierarchy=contiguous_hierarchy(9, 2, 2))
    bad = LabelHierarchy([torch.zeros(3, dtype=torch.long)], torch.tensor([0, 0, 1, 1]))  # cluster 2 is empty
    with pytest.raises(ConfigError, match="at least one child"):
        TreeHead(4, 4, hierarchy=bad)
    with pytest.raises(ConfigError, match="k=11"):
        TreeHead(10, 4).topk(torch.randn(2, 4), 11)
