"""ETF head: simplex geometry, dot-regression loss against the hand formula, gradcheck, a tiny fit."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close
from xlc.errors import ConfigError
from xlc.heads.etf import ETFHead, simplex_etf


@pytest.mark.parametrize("dim,k", [(5, 5), (16, 7), (64, 2), (8, 9)])  # k = dim + 1: the largest simplex
def test_simplex_etf_gram(dim, k):
    m = simplex_etf(dim, k, seed=3).double()  # [d, K]
    expected = torch.full((k, k), -1.0 / (k - 1), dtype=torch.float64)
    expected.fill_diagonal_(1.0)
    assert_close(m.T @ m, expected, atol=1e-6, rtol=0)
    assert torch.equal(simplex_etf(dim, k, seed=3), simplex_etf(dim, k, seed=3))
    assert not torch.equal(simplex_etf(dim, k, seed=3), simplex_etf(dim, k, seed=4))


def test_head_at_c_equal_d_plus_one_has_the_simplex_gram():
    """C = d + 1 classes fit (a simplex ETF spans C - 1 dims); the fixed classifier's Gram is
    (C/(C-1)) (I - 11^T/C): ones on the diagonal, -1/(C-1) off it; C = d + 2 is refused."""
    head = ETFHead(9, 8).double()
    expected = torch.full((9, 9), -1.0 / 8, dtype=torch.float64).fill_diagonal_(1.0)
    assert_close(head.etf.double().T @ head.etf.double(), expected, atol=1e-6, rtol=0)
    scores, labels = head.topk(torch.randn(3, 8, dtype=torch.float64), 9)
    assert all(len(set(row)) == 9 for row in labels.tolist())
    with pytest.raises(ConfigError, match="num_labels=10 > in_dim \\+ 1=9"):
        ETFHead(10, 8)


def test_etf_is_a_buffer_not_a_parameter():
    head = ETFHead(10, 12)
    assert "etf" in dict(head.named_buffers())
    assert all(not name.startswith("etf") for name, _ in head.named_parameters())


def _reference_dr(features, etf, targets, reweight):
    """0.5 * mean_i (h_i.w_yi - ||w_yi|| ||h_i||)^2 / ||h_i||, h = BN(x)/||BN(x)||, w_k = sqrt(gamma/n_k) m_k."""
    x = features.double()
    mu, var = x.mean(0), x.var(0, unbiased=False)
    h = (x - mu) / torch.sqrt(var + 1e-5)  # BatchNorm1d in training mode, weight 1, bias 0
    h = h / h.norm(dim=1, keepdim=True)
    total = 0.0
    classes = targets.unique().tolist()
    gamma = len(targets) / len(classes)
    for i, y in enumerate(targets.tolist()):
        n_y = (targets == y).sum().item()
        w = etf.double()[:, y] * ((gamma / n_y) ** 0.5 if reweight else 1.0)
        total += (h[i] @ w - w.norm() * h[i].norm()) ** 2 / h[i].norm()
    return 0.5 * total / len(targets)


@pytest.mark.parametrize("reweight", [True, False])
def test_dot_regression_loss_matches_hand_formula(reweight):
    torch.manual_seed(0)
    head = ETFHead(6, 8, reweight=reweight).double()
    x = torch.randn(10, 8, dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1, 2, 2, 5, 5, 5, 5])
    assert_close(head.loss(x, y), _reference_dr(x, head.etf, y, reweight), atol=1e-10, rtol=1e-10)


def test_dot_regression_multi_label_pal_mean():
    """Multi-label, no reweighting: row i contributes mean over its positives of 0.5 (h_i.m_k - ||m_k||)^2."""
    torch.manual_seed(1)
    head = ETFHead(5, 6, reweight=False).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    y = torch.tensor([[0, 3], [1, -1], [-1, -1], [4, 4]])
    h, m = head.embed(x), head.etf  # unit rows; ||m_k|| = 1 up to the buffer's float32 rounding

    def term(i, k):
        return 0.5 * (h[i] @ m[:, k] - m[:, k].norm()) ** 2

    expected = (0.5 * (term(0, 0) + term(0, 3)) + term(1, 1) + term(3, 4)) / 4
    assert_close(head.loss(x, y), expected, atol=1e-10, rtol=1e-10)


def test_dot_regression_gradcheck():
    torch.manual_seed(2)
    head = ETFHead(4, 5).double()
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 1, 2, 3, 3])
    assert torch.autograd.gradcheck(lambda f: head.loss(f, y), (x,))


def test_topk_ranks_cosines():
    torch.manual_seed(3)
    head = ETFHead(7, 9).eval()
    x = torch.randn(5, 9)
    scores, labels = head.topk(x, 3)
    full = head.embed(x) @ head.etf  # [B, C]
    ref_scores, ref_labels = full.sort(dim=1, descending=True)
    assert_close(scores, ref_scores[:, :3])
    assert torch.equal(labels, ref_labels[:, :3])


def test_too_many_labels_points_to_mhp():
    with pytest.raises(ConfigError, match="mhp with etf=true"):
        ETFHead(20, 16)


def test_tiny_training_run_separates_classes():
    torch.manual_seed(4)
    num_labels, dim = 10, 16
    centres = torch.randn(num_labels, dim) * 3
    y = torch.arange(num_labels).repeat(20)  # [200]
    x = centres[y] + 0.3 * torch.randn(len(y), dim)
    backbone = torch.nn.Linear(dim, dim)
    head = ETFHead(num_labels, dim)
    opt = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        head.loss(backbone(x), y).backward()
        opt.step()
    head.eval()
    _, pred = head.topk(backbone(x), 1)
    assert (pred[:, 0] == y).float().mean() >= 0.98
