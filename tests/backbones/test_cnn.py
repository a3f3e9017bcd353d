"""The `cnn` backbone (a small ResNet) and the batch augmentation it applies in training: shapes, channels-last
layout, configurable width/depth, augmentation off in eval and the identity at strength 0, and a few steps of
training that fit a tiny image set."""

import pytest
import torch

from xlc.backbones import build_backbone
from xlc.data import Batch
from xlc.data.augment import random_affine
from xlc.heads import build_head


def cnn(image, **options):
    torch.manual_seed(0)
    return build_backbone("cnn", num_features=None, text=False, image=image, hidden=[16], dropout=0.0, **options)


def images(n, h, w, c, seed=0):
    return torch.randint(0, 256, (n, h * w * c), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("shape", [(32, 32, 1), (24, 20, 3)])
def test_shapes_and_channels_last(shape):
    h, w, c = shape
    model = cnn({"height": h, "width": w, "channels": c}, width=8, depth=[1, 1, 1]).eval()
    seen = []
    model.blocks[-1].register_forward_hook(lambda mod, inp, out: seen.append(out))
    out = model(Batch(targets=torch.zeros(5, dtype=torch.long), image=images(5, h, w, c)))
    assert out.shape == (5, 16) and torch.isfinite(out).all()
    assert seen[0].shape == (5, 32, -(-h // 4), -(-w // 4))  # width 8 * 2^2 channels, two stride-2 stages
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    assert all(p.is_contiguous() for p in model.parameters())  # DeepSpeed flattens and broadcasts them


def test_width_and_depth_set_the_size():
    shape = {"height": 32, "width": 32, "channels": 1}
    small, deep, wide = cnn(shape, width=8, depth=[1, 1]), cnn(shape, width=8, depth=[2, 2, 2]), cnn(shape, width=16)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(small) < count(deep) < count(wide)
    with pytest.raises(ValueError, match="width=8, depth=\\[\\]"):
        cnn(shape, width=8, depth=[])


def test_augmentation_only_in_training_and_identity_at_zero():
    x = torch.rand(6, 1, 16, 16)
    torch.testing.assert_close(random_affine(x, strength=0.0), x, atol=1e-6, rtol=0)
    # intensity: each image a*x + b with contrast a in [0.8, 1.2], brightness b in [-0.1, 0.1], one draw per image
    flat = random_affine(torch.full((64, 1, 16, 16), 0.5), strength=1.0)[:, :, 4:12, 4:12]  # away from the border
    per_image = flat.flatten(1)
    assert (per_image.std(1) < 1e-5).all() and per_image.min() >= 0.3 - 1e-6 and per_image.max() <= 0.7 + 1e-6
    assert per_image[:, 0].unique().numel() == 64  # fresh draws per image
    # geometry: rotation and scale about the centre, translation up to 0.12 of the half-size (2 px of 33):
    # a lit centre pixel stays within 2 px of the centre, and moves off it in most images
    dot = torch.zeros(64, 1, 33, 33)
    dot[:, :, 16, 16] = 1
    peak = random_affine(dot, strength=1.0).flatten(1).argmax(1)
    rows, cols = peak // 33, peak % 33
    assert ((rows - 16).abs() <= 2).all() and ((cols - 16).abs() <= 2).all()
    assert ((rows != 16) | (cols != 16)).float().mean() > 0.5
    model = cnn({"height": 16, "width": 16, "channels": 1}, width=4, depth=[1])
    batch = Batch(targets=torch.zeros(6, dtype=torch.long), image=images(6, 16, 16, 1))
    model.eval()
    torch.testing.assert_close(model(batch), model(batch))
    model.train()
    model.project.dropout.p = 0.0
    with torch.no_grad():
        assert not torch.allclose(model(batch), model(batch))  # fresh draws each step


def test_a_few_steps_fit_a_tiny_image_set():
    """4 classes, each a fixed random 16 x 16 pattern under pixel noise: 30 AdamW steps of cnn + softmax."""
    gen = torch.Generator().manual_seed(0)
    patterns = torch.rand(4, 256, generator=gen) * 255  # [4, H*W]
    targets = torch.arange(32) % 4
    pixels = (patterns[targets] + torch.randn(32, 256, generator=gen) * 20).clamp(0, 255).to(torch.uint8)
    batch = Batch(targets=targets, image=pixels)
    model = cnn({"height": 16, "width": 16, "channels": 1}, width=8, depth=[1, 1], augment=0.5)
    head = build_head("softmax", 4, model.out_dim)
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=3e-3)
    losses = []
    for _ in range(30):
        loss = head.loss(model(batch), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses
