"""MHP: every loss against a plain float64 reference, gradcheck, exact top-k against brute force, training."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tests.helpers import assert_close
from xlc.errors import ConfigError, DataError
from xlc.heads import build_head
from xlc.heads.mhp import MHPHead


def _digits(y, sizes):
    """Most significant digit first: y = sum_h y_h prod_{h' > h} L_h'."""
    out = []
    for h in range(len(sizes)):
        stride = math.prod(sizes[h + 1 :])
        out.append(y // stride)
        y -= out[-1] * stride
    return out


def _brute_log_probs(head, x):
    """log p(y) [B, C] by materialising the rank-G tensor T[y] = sum_g prod_h exp(O_g^h[y_h]) over all codes."""
    logits = [o.double() for o in head.head_logits(x)]  # H x [B, G, L_h]
    sizes = head.sizes
    out = torch.empty(x.shape[0], head.num_labels, dtype=torch.float64)
    for i in range(x.shape[0]):
        table = {}
        for code in itertools.product(*[range(s) for s in sizes]):
            table[code] = sum(
                math.prod(math.exp(logits[h][i, g, code[h]].item()) for h in range(len(sizes)))
                for g in range(head.rank)
            )
        log_z = math.log(sum(table.values()))  # normaliser over all prod L_h codes, invalid ones included
        for y in range(head.num_labels):
            out[i, y] = math.log(table[tuple(_digits(y, sizes))]) - log_z
    return out


def _random_head(sizes, num_labels, rank, in_dim=6, scale=1.0, seed=0, **options):
    torch.manual_seed(seed)
    head = MHPHead(num_labels, in_dim, sizes=sizes, rank=rank, **options).double()
    with torch.no_grad():
        head.linear.weight.mul_(scale)
        head.linear.bias.normal_(0, scale)
    return head


def test_ce_rank1_is_per_head_ce_summed():
    """loss = mean_i sum_h -(O^h_i[y_h] - logsumexp O^h_i)."""
    head = _random_head([4, 5], 17, rank=1)
    x = torch.randn(7, 6, dtype=torch.float64)
    y = torch.tensor([0, 3, 16, 9, 12, 5, 1])
    logits = head.linear(x).detach()
    expected = 0.0
    for i in range(7):
        d = _digits(y[i].item(), [4, 5])
        expected += -(logits[i, d[0]] - logits[i, :4].logsumexp(0)) - (logits[i, 4 + d[1]] - logits[i, 4:].logsumexp(0))
    assert_close(head.loss(x, y), expected / 7, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("sizes,num_labels,rank", [([3, 4], 11, 3), ([2, 3, 2], 12, 2), ([5, 2], 9, 1)])
def test_ce_equals_brute_force_likelihood(sizes, num_labels, rank):
    head = _random_head(sizes, num_labels, rank, scale=2.0)
    x = torch.randn(5, 6, dtype=torch.float64)
    y = torch.tensor([0, num_labels - 1, 2, 5, 7])
    ref = _brute_log_probs(head, x)  # [B, C]
    assert_close(head.loss(x, y), -ref[torch.arange(5), y].mean(), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("reduction", ["pal_mean", "pal_sum"])
def test_ce_multi_label_pal(reduction):
    head = _random_head([3, 4], 12, rank=2, multi_label_loss=reduction)
    x = torch.randn(3, 6, dtype=torch.float64)
    y = torch.tensor([[1, 7, -1], [-1, -1, -1], [4, 4, 11]])
    ref = _brute_log_probs(head, x)
    rows = [[1, 7], [], [4, 11]]  # duplicates count once
    expected = sum(
        -sum(ref[i, c] for c in r) / (len(r) if reduction == "pal_mean" else 1) for i, r in enumerate(rows) if r
    )
    assert_close(head.loss(x, y), expected / 3, atol=1e-10, rtol=1e-10)


def test_joint_loss_is_one_log_softmax_over_concatenated_heads():
    """loss = -mean_i sum_h log_softmax([O^1 .. O^H])_i[off_h + y_h]."""
    head = _random_head([3, 4, 2], 20, rank=1, loss="joint")
    x = torch.randn(4, 6, dtype=torch.float64)
    y = torch.tensor([19, 0, 7, 13])
    z = head.linear(x).detach()
    expected = 0.0
    for i in range(4):
        d = _digits(y[i].item(), [3, 4, 2])
        lse = z[i].logsumexp(0)
        expected += -sum(z[i, off + d_h] - lse for off, d_h in zip([0, 3, 7], d))
    assert_close(head.loss(x, y), expected / 4, atol=1e-12, rtol=1e-12)


def test_bce_loss_is_mean_over_concatenated_outputs():
    """loss = mean_{i,j} -(t log s(z) + (1 - t) log(1 - s(z))), t = every positive's digit in each head."""
    head = _random_head([3, 4], 12, rank=1, loss="bce")
    x = torch.randn(2, 6, dtype=torch.float64)
    y = torch.tensor([[5, 10], [2, -1]])
    z = head.linear(x).detach()
    t = torch.zeros(2, 7, dtype=torch.float64)
    for i, labels in enumerate([[5, 10], [2]]):
        for label in labels:
            d = _digits(label, [3, 4])
            t[i, d[0]] = t[i, 3 + d[1]] = 1
    s = torch.sigmoid(z)
    expected = -(t * torch.log(s) + (1 - t) * torch.log(1 - s)).mean()
    assert_close(head.loss(x, y), expected, atol=1e-12, rtol=1e-12)


def test_etf_dr_loss_is_per_head_dot_regression():
    """loss = sum_h 0.5 mean_i (gamma_h/n_{y_h}) (h^h_i.m^h_{y_h} - ||m^h|| ||h^h_i||)^2 / ||h^h_i||."""
    torch.manual_seed(0)
    head = MHPHead(20, 6, sizes=[4, 5], etf=True).double()
    x = torch.randn(8, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 5, 19, 19, 7, 13, 0])
    z = head.linear(x).detach()
    z = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)  # BatchNorm, training mode
    expected = 0.0
    for h, (lo, hi) in enumerate([(0, 4), (4, 9)]):
        feats = z[:, lo:hi] / z[:, lo:hi].norm(dim=1, keepdim=True)
        m = getattr(head, f"etf{h}").double()
        digit = torch.tensor([_digits(v, [4, 5])[h] for v in y.tolist()])
        gamma = 8 / len(digit.unique())
        for i in range(8):
            scale = math.sqrt(gamma / (digit == digit[i]).sum().item())
            w = scale * m[:, digit[i]]
            expected += 0.5 * (feats[i] @ w - w.norm() * feats[i].norm()) ** 2 / feats[i].norm() / 8
    assert_close(head.loss(x, y), expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("options", [dict(rank=3), dict(rank=1, loss="joint"), dict(etf=True)])
def test_gradcheck(options):
    torch.manual_seed(1)
    head = MHPHead(10, 5, sizes=[3, 4], **options).double()
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[0, 9], [3, -1], [4, 5], [8, -1], [1, 2], [6, 7]])
    assert torch.autograd.gradcheck(lambda f: head.loss(f, y), (x,))


CASES = [
    ([4, 5], 20, 1), ([4, 5], 17, 1), ([3, 3, 3], 25, 1), ([2, 5, 3], 21, 1), ([7, 2], 13, 1), ([40], 37, 1),
    ([4, 5], 17, 2), ([3, 3, 3], 25, 4), ([6, 6], 31, 3), ([2, 5, 3], 21, 5),
]


@pytest.mark.parametrize("block", [None, 60])  # 60: tiny row blocks, the exhaustive fallback for open rows
@pytest.mark.parametrize("sizes,num_labels,rank", CASES)
def test_topk_equals_brute_force(sizes, num_labels, rank, block, monkeypatch):
    if block:
        monkeypatch.setattr("xlc.heads.mhp.BLOCK_ELEMENTS", block)
    for seed, scale in [(0, 0.5), (1, 3.0), (2, 8.0)]:
        head = _random_head(sizes, num_labels, rank, scale=scale, seed=seed)
        x = torch.randn(4, 6, dtype=torch.float64)
        ref = _brute_log_probs(head, x)  # [B, C]
        for k in sorted({1, 3, num_labels // 2, num_labels}):
            scores, labels = head.topk(x, k)
            ref_scores, ref_labels = ref.sort(dim=1, descending=True)
            assert_close(scores, ref_scores[:, :k], atol=1e-9, rtol=1e-9)
            assert torch.equal(labels, ref_labels[:, :k]), (seed, k)
            assert (labels < num_labels).all() and (labels >= 0).all()


def test_topk_masks_invalid_codes_that_score_highest():
    head = _random_head([4, 5], 17, rank=1)
    with torch.no_grad():  # make the invalid code 19 = (3, 4) the per-head argmax
        head.linear.bias.zero_()
        head.linear.weight.zero_()
        head.linear.bias[3] = 5.0
        head.linear.bias[4 + 4] = 5.0
    x = torch.randn(2, 6, dtype=torch.float64)
    _, labels = head.topk(x, 17)
    assert (labels < 17).all()
    assert all(len(set(row)) == 17 for row in labels.tolist())


def test_top1_is_per_head_argmax_when_valid():
    head = _random_head([8, 9, 7], 8 * 9 * 7, rank=1, in_dim=10, scale=2.0)
    x = torch.randn(50, 10, dtype=torch.float64)
    digits = torch.stack([o[:, 0].argmax(1) for o in head.head_logits(x)], dim=1)  # [B, H]
    _, labels = head.topk(x, 1)
    assert torch.equal(labels[:, 0], head.codec.decode(digits))


def test_topk_large_label_space_is_fast_and_consistent():
    head = MHPHead(1_000_003, 32, num_heads=2)
    x = torch.randn(64, 32)
    scores, labels = head.topk(x, 10)
    assert labels.shape == (64, 10) and (labels < 1_000_003).all()
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    logp, log_pi = head.log_probs(x)
    rows = torch.arange(64).repeat_interleave(10)
    assert_close(head._log_prob(logp, log_pi, rows, labels.flatten()).view(64, 10), scores, atol=1e-5, rtol=1e-5)


def test_build_head_and_option_errors():
    head = build_head("mhp", 100, 8, num_heads=2)
    assert head.sizes == [10, 10]
    with pytest.raises(ConfigError, match="loss='mse'"):
        build_head("mhp", 100, 8, loss="mse")
    with pytest.raises(ConfigError, match="rank=2 with loss='bce'"):
        build_head("mhp", 100, 8, loss="bce", rank=2)
    with pytest.raises(ConfigError, match="loss=.dr. with etf=False"):
        build_head("mhp", 100, 8, loss="dr")
    with pytest.raises(ConfigError, match="product 20 < num_labels=100"):
        build_head("mhp", 100, 8, sizes=[4, 5])
    with pytest.raises(DataError, match="targets row 1"):
        head.loss(torch.randn(2, 8), torch.tensor([3, 100]))


def test_theorem3_rank1_product_with_bias_fits_grid_classes():
    """N x N Gaussian blobs on a 2-D grid: head h only needs the h-th coordinate (a rank-1 weight per
    head) plus its bias to pick the digit, so MHP with bias reaches 100% train accuracy."""
    torch.manual_seed(0)
    n = 5
    y = torch.arange(n * n).repeat(8)  # [200]
    grid = torch.stack([y // n, y % n], dim=1).float()  # [200, 2] the two digits as coordinates
    x = grid + 0.08 * torch.randn_like(grid)
    head = MHPHead(n * n, 2, sizes=[n, n])
    opt = torch.optim.Adam(head.parameters(), lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        head.loss(x, y).backward()
        opt.step()
    _, pred = head.topk(x, 1)
    assert (pred[:, 0] == y).all()


@pytest.mark.parametrize("options", [dict(), dict(loss="joint"), dict(loss="bce"), dict(rank=3), dict(etf=True)])
def test_tiny_training_reaches_high_train_accuracy(options):
    torch.manual_seed(0)
    num_labels, dim = 60, 16
    centres = torch.randn(num_labels, dim)
    y = torch.arange(num_labels).repeat(5)  # [300]
    x = centres[y] + 0.05 * torch.randn(len(y), dim)
    backbone = torch.nn.Sequential(torch.nn.Linear(dim, 64), torch.nn.ReLU())
    head = MHPHead(num_labels, 64, sizes=[8, 8], **options)
    opt = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        head.loss(backbone(x), y).backward()
        opt.step()
    head.eval()
    _, pred = head.topk(backbone(x), 1)
    assert (pred[:, 0] == y).float().mean() >= 0.95
