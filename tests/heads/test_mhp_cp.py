"""`mhp` with `rank_form="cp"` (MHE Eq. 16) against a float64 reference that materialises the whole tensor.

Reference: T[c_1, ..., c_H] = sum_g prod_h O_g^h[c_h] (an einsum over all prod L_h codes), flattened in
mixed-radix order (first digit most significant) and cut to the C valid labels; log p = log_softmax(T).
Loss = mean_i -log p_i(y_i) (multi-label: PAL over the row's distinct positives); top-k = sort of T.
"""

from __future__ import annotations

import string
import warnings

import pytest
import torch

from tests.helpers import assert_close
from xlc.errors import ConfigError
from xlc.heads import build_head
from xlc.heads.mhp import MHPHead


def reference_logits(head: MHPHead, x: torch.Tensor) -> torch.Tensor:
    """The full CP logit tensor `[B, C]` by einsum, in float64."""
    o = head.linear(x.double()).view(len(x), head.rank, -1).split(head.sizes, dim=2)  # H x [B, G, L_h]
    letters = string.ascii_lowercase[: len(head.sizes)]
    spec = ",".join(f"zg{c}" for c in letters) + f"->z{letters}"
    return torch.einsum(spec, *o).reshape(len(x), -1)[:, : head.num_labels]  # [B, C]


def reference_loss(head, x, targets, reduction="pal_mean"):
    logp = reference_logits(head, x).log_softmax(1)  # [B, C]
    rows = []
    for i, row in enumerate(targets.view(len(targets), -1).tolist()):
        labels = sorted({t for t in row if t >= 0})
        per = sum((-logp[i, k] for k in labels), torch.zeros((), dtype=torch.float64))
        rows.append(per / len(labels) if labels and reduction == "pal_mean" else per)
    return torch.stack(rows).mean()


def cp_head(sizes, num_labels, rank, seed=0, **options):
    torch.manual_seed(seed)
    head = MHPHead(num_labels, 6, sizes=sizes, rank=rank, rank_form="cp", **options).double()
    with torch.no_grad():
        head.linear.bias.normal_()
    return head


TARGETS = {
    "single": torch.tensor([0, 16, 3, 9, 11]),
    "multi": torch.tensor([[0, 7, -1], [-1, -1, -1], [4, 4, 16], [2, -1, -1], [1, 5, 9]]),
}


@pytest.mark.parametrize("sizes,num_labels,rank", [([3, 6], 17, 2), ([2, 3, 3], 17, 3), ([17], 17, 1)])
@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("reduction", ["pal_mean", "pal_sum"])
@pytest.mark.parametrize("chunk", [1, 4, None])
def test_loss_and_gradient_equal_the_full_tensor_reference(sizes, num_labels, rank, kind, reduction, chunk):
    head = cp_head(sizes, num_labels, rank, chunk=chunk, multi_label_loss=reduction)
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    loss = head.loss(x, TARGETS[kind])
    got = torch.autograd.grad(loss, (x, head.linear.weight, head.linear.bias))
    want = reference_loss(head, x, TARGETS[kind], reduction)
    assert_close(loss, want, atol=1e-12, rtol=1e-12)
    for g, w in zip(got, torch.autograd.grad(want, (x, head.linear.weight, head.linear.bias))):
        assert_close(g, w, atol=1e-12, rtol=1e-10)


def test_gradcheck():
    head = cp_head([3, 4], 11, 2, chunk=3)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: head.loss(f, TARGETS["multi"][:4].clamp(max=10)), (x,))


@pytest.mark.parametrize("sizes,num_labels,rank", [([4, 5], 17, 2), ([3, 3, 3], 25, 3), ([6, 7], 42, 1)])
@pytest.mark.parametrize("chunk", [2, 7, None])
def test_topk_equals_brute_force(sizes, num_labels, rank, chunk):
    head = cp_head(sizes, num_labels, rank, chunk=chunk)
    x = torch.randn(8, 6, dtype=torch.float64)
    ref_scores, ref_labels = reference_logits(head, x).detach().sort(dim=1, descending=True, stable=True)
    for k in (1, 3, num_labels):
        scores, labels = head.topk(x, k)
        assert_close(scores, ref_scores[:, :k], atol=1e-12, rtol=1e-12)
        assert torch.equal(labels, ref_labels[:, :k])


def _probability_matrix(head, x):
    """p(y) for one row, reshaped to the L_1 x L_2 code grid; from the head's own top-k over all labels."""
    scores, labels = head.topk(x, head.num_labels)  # [1, C]
    p = torch.empty(head.num_labels, dtype=torch.float64)
    p[labels[0]] = scores[0].softmax(0) if head.rank_form == "cp" else scores[0].exp()
    return p.view(*head.sizes)


def test_probability_matrix_rank_differs_from_the_mixture():
    """The issue's 6 x 7, G = 2 example: softmax(sum_g a_g b_g^T) is entrywise exp of a rank-2 matrix, full
    rank 6 in general; the mixture sum_g pi_g p_g q_g^T has rank <= 2."""
    x = torch.randn(1, 6, dtype=torch.float64)
    ranks = {}
    for form in ("cp", "mixture"):
        torch.manual_seed(3)
        head = MHPHead(42, 6, sizes=[6, 7], rank=2, rank_form=form).double()
        p = _probability_matrix(head, x)
        assert_close(p.sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-12, rtol=0)
        ranks[form] = int(torch.linalg.matrix_rank(p, rtol=1e-10))
    assert ranks == {"cp": 6, "mixture": 2}


def test_tiny_training_reaches_high_train_accuracy():
    torch.manual_seed(0)
    num_labels, dim = 60, 16
    y = torch.arange(num_labels).repeat(5)  # [300]
    x = torch.randn(num_labels, dim)[y] + 0.05 * torch.randn(len(y), dim)
    backbone = torch.nn.Sequential(torch.nn.Linear(dim, 64), torch.nn.ReLU())
    head = build_head("mhp", num_labels, 64, sizes=[8, 8], rank=4, rank_form="cp", chunk=16)
    opt = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        head.loss(backbone(x), y).backward()
        opt.step()
    assert (head.topk(backbone(x), 1)[1][:, 0] == y).float().mean() >= 0.95


def test_options_and_bfloat16():
    with pytest.raises(ConfigError, match="rank_form='tucker'"):
        build_head("mhp", 100, 8, rank_form="tucker")
    with pytest.raises(ConfigError, match="rank_form='cp' with loss='joint'"):
        build_head("mhp", 100, 8, rank_form="cp", loss="joint")
    head = build_head("mhp", 30, 8, rank=2, rank_form="cp")
    x, y = torch.randn(4, 8), torch.tensor([0, 5, 9, 29])
    want = head.loss(x, y)
    xb = x.bfloat16().requires_grad_()
    loss = head.bfloat16().loss(xb, y)  # a bf16 engine: the CP products still run in fp32
    loss.backward()
    assert loss.dtype == torch.float32 and xb.grad.dtype == torch.bfloat16
    assert_close(loss, want, atol=0.05, rtol=0.05)


def _catch(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_multi_label_defaults_to_bce_and_an_explicit_product_loss_warns_naming_the_fitting_heads():
    assert build_head("mhp", 20, 4, multi_label=True).objective == "bce"  # the default on label sets
    assert build_head("mhp", 20, 4, multi_label=False).objective == "ce"
    assert build_head("mhp", 20, 4, multi_label=True, rank=2).objective == "ce"  # rank > 1 is ce only
    assert any("mhc" in m and "bce" in m for m in _catch(lambda: build_head("mhp", 20, 4, multi_label=True, loss="ce")))
    for options in (dict(), dict(loss="bce"), dict(rank_form="cp")):  # multi-label-appropriate: silent
        assert not _catch(lambda: build_head("mhp", 20, 4, multi_label=True, **options))
    head = build_head("mhp", 20, 4)  # not told: warns at the first batch with a row of >= 2 labels
    x = torch.randn(2, 4)
    assert not _catch(lambda: head.loss(x, torch.tensor([[3, 3], [1, -1]])))  # duplicates: still one label
    assert len(_catch(lambda: head.loss(x, torch.tensor([[3, 5], [1, -1]])))) == 1
    assert not _catch(lambda: head.loss(x, torch.tensor([[3, 5], [1, -1]])))  # once
