"""Glyph rendering for `data_tools.builders.glyphs`, importing only numpy, Pillow and fontTools: the rendering
processes import this module alone (not torch), so they start in a fraction of a second.

A row is rendered at twice the output size (supersampling) on a black square, the glyph's ink box centred and
its em size 0.8 of the side; then, each drawn per row with strength `augment` (0: clean glyphs): stroke
width (thicker by a stroke of 1-2 px, thinner by a 3x3 erosion unless it removes half the ink, or unchanged;
at 2x, so +-0.5-1 px out), an affine map about the centre (rotation +-10 deg, shear +-0.2, scale
x0.85-1.1, shift +-8% of the side), a box downsample to `size`, a Gaussian blur of radius U(0, 1) px and
Gaussian pixel noise of std U(0, 0.1) of the range. Pixels are uint8 grey, ink 255 on 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SUPERSAMPLE = 2
EM = 0.8  # font size as a fraction of the (supersampled) side


@dataclass(frozen=True)
class Face:
    """One font face: `index` picks the face inside a .ttc collection."""

    name: str
    path: str
    index: int = 0


def coverage(faces: Sequence[Face], codepoints: Sequence[int]) -> np.ndarray:
    """bool [F, N]: whether face f's character map has a glyph for code point n (fontTools `getBestCmap`)."""
    from fontTools.ttLib import TTFont

    out = np.zeros((len(faces), len(codepoints)), dtype=bool)
    for f, face in enumerate(faces):
        cmap = TTFont(face.path, fontNumber=face.index, lazy=True).getBestCmap() or {}
        out[f] = [c in cmap for c in codepoints]
    return out


_FONTS: list = []  # this process's ImageFont of each face, loaded once by `load_fonts`


def load_fonts(faces: Sequence[Face], size: int) -> None:
    from PIL import ImageFont

    _FONTS[:] = [ImageFont.truetype(f.path, round(EM * size * SUPERSAMPLE), index=f.index) for f in faces]


def render(font, char: str, size: int, augment: float, rng: np.random.Generator) -> np.ndarray:
    """uint8 [size, size]: `char` in `font`, distorted as the module docstring says (`augment` scales it)."""
    from PIL import Image, ImageDraw, ImageFilter

    side = size * SUPERSAMPLE
    img = Image.new("L", (side, side), 0)
    x0, y0, x1, y1 = font.getbbox(char)
    stroke = int(rng.integers(-1, 3)) if augment > 0 else 0  # -1 thinner, 0 as drawn, 1-2 thicker
    ImageDraw.Draw(img).text(((side - (x1 - x0)) / 2 - x0, (side - (y1 - y0)) / 2 - y0), char, fill=255, font=font,
                             stroke_width=max(stroke, 0), stroke_fill=255)
    if stroke < 0:  # thinning, unless it erases most of the ink (hairline faces): a blank image is no sample
        thinner = img.filter(ImageFilter.MinFilter(3))
        if np.asarray(thinner, dtype=np.float32).sum() >= 0.5 * np.asarray(img, dtype=np.float32).sum():
            img = thinner
    if augment > 0:
        angle, shear = math.radians(rng.uniform(-10, 10) * augment), rng.uniform(-0.2, 0.2) * augment
        scale = 1 + rng.uniform(-0.15, 0.1) * augment
        shift = rng.uniform(-0.08, 0.08, 2) * augment * side
        # output -> input pixel map (PIL's AFFINE): p_in = A p_out + t, A the inverse of rotate . shear . scale
        c, s = math.cos(angle) / scale, math.sin(angle) / scale
        a = np.array([[c, -s + shear], [s, c]])  # [2, 2]
        centre = np.full(2, side / 2)
        t = centre - a @ centre - shift
        img = img.transform((side, side), Image.AFFINE, (*a[0], t[0], *a[1], t[1]), resample=Image.BILINEAR)
    img = img.resize((size, size), Image.BOX)
    if augment > 0:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.0) * augment))
        noise = rng.normal(0, rng.uniform(0, 0.1 * augment) * 255, (size, size))  # [size, size]
        return np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return np.asarray(img, dtype=np.uint8)


def render_chunk(task: tuple) -> np.ndarray:
    """uint8 [n, size * size]: rows (class, face, render id) of one chunk; each row's generator is seeded by
    (seed, stream, render id), so the pixels do not depend on how rows are split into chunks or workers."""
    rows, chars, size, augment, seed, stream = task
    out = np.empty((len(rows), size * size), dtype=np.uint8)
    for i, (label, face, row_id) in enumerate(rows):
        rng = np.random.default_rng([seed, stream, int(row_id)])
        out[i] = render(_FONTS[face], chars[label], size, augment, rng).reshape(-1)
    return out
