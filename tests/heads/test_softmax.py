"""`softmax` and `chunked_softmax` heads against a float64 reference, and against each other.

Reference (z = x W^T + b [B, C], S = the row's distinct labels, mean over all B rows):
    single-label: -log softmax(z)_y
    pal_sum:  sum_{k in S} -log softmax(z)_k        pal_mean: the same / |S|  (0 for an empty row)
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close
from xlc.bench.heads import PeakMemory
from xlc.errors import ConfigError, DataError
from xlc.heads import build_head

TARGETS = {
    "single": torch.tensor([0, 3, 16, 7, 4, 20]),
    "multi": torch.tensor([[0, 3, -1], [5, 5, 2], [-1, -1, -1], [20, 0, 7], [4, -1, -1], [1, 2, 3]]),
}


def reference_loss(x, w, b, targets, reduction):
    logp = torch.log_softmax(x.double() @ w.double().T + b.double(), dim=1)  # [B, C]
    rows = []
    for i, row in enumerate(targets.view(len(targets), -1).tolist()):
        labels = sorted({t for t in row if t >= 0})
        per = sum(-logp[i, k] for k in labels) if labels else torch.tensor(0.0, dtype=torch.float64)
        rows.append(per / len(labels) if labels and reduction == "pal_mean" else per)
    return torch.stack(rows).mean()


def separable(num_labels=16, dim=8, n=256, seed=0):
    """Well-separated Gaussian classes: x = 2 * mean[y] + 0.3 * noise."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(num_labels, dim, generator=g)
    y = torch.arange(n) % num_labels
    return 2 * means[y] + 0.3 * torch.randn(n, dim, generator=g), y


def fit_top1(head, x, targets, steps=150, lr=0.05) -> float:
    """Full-batch Adam on `head.loss`; returns the fraction of rows whose top-1 label is a target."""
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        head.loss(x, targets).backward()
        opt.step()
    top1 = head.topk(x, 1)[1]  # [N, 1]
    return (top1 == targets.view(len(targets), -1)).any(1).float().mean().item()


def _pair(seed=0, labels=21, dim=5, **opt):
    torch.manual_seed(seed)
    full = build_head("softmax", labels, dim, **opt).double()
    torch.manual_seed(seed)
    chunked = build_head("chunked_softmax", labels, dim, chunk=4, **opt).double()
    return full, chunked


@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("reduction", ["pal_mean", "pal_sum"])
def test_heads_match_reference_and_each_other(kind, reduction):
    full, chunked = _pair(multi_label_loss=reduction)
    x = torch.randn(6, 5, dtype=torch.float64)
    targets = TARGETS[kind]
    want = reference_loss(x, full.weight, full.bias, targets, reduction)
    losses, grads = [], []
    for head in (full, chunked):
        loss = head.loss(x, targets)
        loss.backward()
        losses.append(loss)
        grads.append((head.weight.grad, head.bias.grad))
    assert_close(losses[0], want)
    assert_close(losses[1], want)
    assert_close(grads[1][0], grads[0][0])
    assert_close(grads[1][1], grads[0][1])


def test_state_dicts_interchange():
    full, chunked = _pair(seed=1)
    torch.manual_seed(2)
    other = build_head("chunked_softmax", 21, 5, chunk=7).double()
    other.load_state_dict(full.state_dict())
    x = torch.randn(6, 5, dtype=torch.float64)
    assert_close(other.loss(x, TARGETS["single"]), full.loss(x, TARGETS["single"]))
    full.load_state_dict(build_head("chunked_softmax", 21, 5).double().state_dict())
    assert sorted(full.state_dict()) == sorted(chunked.state_dict()) == ["bias", "weight"]
    no_bias = build_head("softmax", 21, 5, bias=False)
    build_head("chunked_softmax", 21, 5, bias=False).load_state_dict(no_bias.state_dict())
    assert list(no_bias.state_dict()) == ["weight"]


def test_topk_is_exact_and_identical():
    full, chunked = _pair(labels=40)
    x = torch.randn(9, 5, dtype=torch.float64)
    want_s, want_i = torch.topk(x @ full.weight.T + full.bias, 6, dim=1)
    for head in (full, chunked):
        s, i = head.topk(x, 6)
        assert torch.equal(i, want_i)
        assert_close(s, want_s)


def test_empty_rows_count_in_the_batch_mean():
    full, chunked = _pair()
    x = torch.randn(6, 5, dtype=torch.float64)
    targets = TARGETS["multi"]
    per_row_sum = reference_loss(x, full.weight, full.bias, targets, "pal_mean") * 6
    for head in (full, chunked):
        assert_close(head.loss(x, targets), per_row_sum / 6)
        assert_close(head.loss(x, torch.full((6,), -1)), torch.tensor(0.0))


def test_bfloat16_features_give_float32_loss():
    torch.manual_seed(0)
    x = torch.randn(8, 5)
    for name in ("softmax", "chunked_softmax"):
        head = build_head(name, 21, 5)
        xb = x.bfloat16().requires_grad_()
        loss = head.loss(xb, TARGETS["single"].repeat(2)[:8])
        loss.backward()
        assert loss.dtype == torch.float32 and xb.grad.dtype == torch.bfloat16
        assert_close(loss, head.loss(x, TARGETS["single"].repeat(2)[:8]), atol=0.05, rtol=0.02)
        assert head.topk(xb, 3)[1].shape == (8, 3)


def test_user_errors():
    with pytest.raises(ConfigError, match="multi_label_loss='sum'"):
        build_head("softmax", 10, 4, multi_label_loss="sum")
    with pytest.raises(ConfigError, match="head.chunk"):
        build_head("softmax", 10, 4, chunk=3)
    for name in ("softmax", "chunked_softmax"):
        head = build_head(name, 10, 4)
        with pytest.raises(DataError, match="row 1"):
            head.loss(torch.randn(2, 4), torch.tensor([1, 10]))
        with pytest.raises(ConfigError, match="k=11"):
            head.topk(torch.randn(2, 4), 11)


@pytest.mark.parametrize("name", ["softmax", "chunked_softmax"])
def test_training_separates_classes(name):
    x, y = separable()
    torch.manual_seed(0)
    assert fit_top1(build_head(name, 16, 8), x, y) > 0.97
    multi = torch.stack([y, (y + 1) % 16, torch.full_like(y, -1)], dim=1)  # each row also tagged with the next class
    assert fit_top1(build_head(name, 16, 8), x, multi) > 0.97


def test_chunked_head_never_holds_the_full_logits():
    """B x C = 64 x 400k fp32 logits are 98 MiB; one 64 x 4096 chunk is 1 MiB, weight grads 3 MiB."""
    x, y = torch.randn(64, 2), torch.randint(400_000, (64,))
    peaks = {}
    for name in ("softmax", "chunked_softmax"):
        torch.manual_seed(0)
        head = build_head(name, 400_000, 2, **({"chunk": 4096} if name == "chunked_softmax" else {}))
        with PeakMemory(torch.device("cpu")) as mem:
            head.loss(x, y).backward()
        peaks[name] = mem.peak
    if peaks["softmax"] is None:
        pytest.skip("/proc/self/clear_refs is not writable here")
    assert peaks["softmax"] > 64 * 400_000 * 4
    assert peaks["chunked_softmax"] < 32 * 2**20


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["softmax", "chunked_softmax", "bce", "rbf"])
def test_cuda_bfloat16_matches_float32(name):
    torch.manual_seed(0)
    head = build_head(name, 5000, 64).cuda()
    x, y = torch.randn(32, 64, device="cuda"), torch.randint(5000, (32,), device="cuda")
    xb = x.bfloat16().requires_grad_()
    loss = head.loss(xb, y)
    loss.backward()
    assert loss.dtype == torch.float32 and xb.grad.dtype == torch.bfloat16 and head.weight.grad.dtype == torch.float32
    assert_close(loss, head.loss(x, y), atol=0.05, rtol=0.02)
    s, i = head.topk(xb, 5)
    assert s.device.type == "cuda" and i.shape == (32, 5)
