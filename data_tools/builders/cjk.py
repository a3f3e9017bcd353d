"""CJK glyphs: one class per CJK Unified Ideograph (U+4E00-U+9FFF), images rendered from Debian's CJK fonts.

Twelve visually distinct faces from nine Debian font packages (downloaded and unpacked, never installed; the
other faces of those packages are regional or monospaced variants with the same ideograph outlines). Classes:
the code points of `block` that at least `min_fonts` faces cover (their cmaps), ordered by how many faces
cover them (then by code point); `--classes N` keeps N of that order after skipping `--skip-classes`, so
two builds with disjoint ranges give disjoint class sets (open-set retrieval on held-out classes). Label ids
follow the code points. A face that lacks a class's glyph renders no row for it. Coverage of U+4E00-U+9FFF
(bookworm's packages): 8,974 code points in all 12 faces, 18,963 in >= 10, 20,932 in >= 8 (the default);
the IPA faces hold only the 9,571 Japanese-use ideographs.

Splits: train = `renders` distorted renders per (class, face); test = `test_renders` renders with fresh draws
of the same distortions (held-out augmentations of seen fonts), or, with `--holdout-font NAME`, every render of
that face (excluded from train): an unseen style. `--fonts DIR` renders from the font files in DIR (face 0 of
each, named by file stem) instead of the Debian packages. Rendering: `data_tools.builders.glyphs`.
"""

from __future__ import annotations

import os
from pathlib import Path

from data_tools.builders.glyphs import Split, write_glyph_dataset
from data_tools.glyph_render import Face, coverage
from data_tools.stats import sample_grid
from data_tools.builders.packages import apt_package_dir, apt_package_version
from xlc.data.schema import SAMPLES_FILE
from xlc.errors import ConfigError, DataError

# (face name, Debian package, font file under /usr/share/fonts, index in a .ttc)
DEBIAN_FACES = (
    ("noto-sans", "fonts-noto-cjk", "opentype/noto/NotoSansCJK-Regular.ttc", 0),
    ("noto-sans-bold", "fonts-noto-cjk", "opentype/noto/NotoSansCJK-Bold.ttc", 0),
    ("noto-serif", "fonts-noto-cjk", "opentype/noto/NotoSerifCJK-Regular.ttc", 0),
    ("noto-serif-bold", "fonts-noto-cjk", "opentype/noto/NotoSerifCJK-Bold.ttc", 0),
    ("ukai", "fonts-arphic-ukai", "truetype/arphic/ukai.ttc", 0),
    ("uming", "fonts-arphic-uming", "truetype/arphic/uming.ttc", 0),
    ("wqy-zenhei", "fonts-wqy-zenhei", "truetype/wqy/wqy-zenhei.ttc", 0),
    ("wqy-microhei", "fonts-wqy-microhei", "truetype/wqy/wqy-microhei.ttc", 0),
    ("ipa-gothic", "fonts-ipafont-gothic", "opentype/ipafont-gothic/ipag.ttf", 0),
    ("ipa-mincho", "fonts-ipafont-mincho", "opentype/ipafont-mincho/ipam.ttf", 0),
    ("hanazono", "fonts-hanazono", "truetype/hanazono/HanaMinA.ttf", 0),
    ("babelstone", "fonts-babelstone-han", "truetype/babelstone/BabelStoneHan.ttf", 0),
)
FONT_SUFFIXES = (".ttf", ".otf", ".ttc")


def debian_faces() -> tuple[list[Face], str]:
    """The faces of `DEBIAN_FACES` from their unpacked packages, and the packages' versions for meta.json."""
    faces, versions = [], {}
    for name, package, file, index in DEBIAN_FACES:
        path = apt_package_dir(package) / "usr" / "share" / "fonts" / file
        if not path.is_file():
            raise DataError(f"{path}: missing from Debian package {package}; the package layout may have changed")
        faces.append(Face(name, str(path), index))
        versions[package] = apt_package_version(package)
    return faces, "Debian " + ", ".join(f"{p} {v}" for p, v in versions.items())


def dir_faces(directory: str) -> list[Face]:
    """Face 0 of every font file in `directory` (recursively), sorted by path, named by file stem."""
    paths = sorted(p for p in Path(directory).rglob("*") if p.suffix.lower() in FONT_SUFFIXES)
    if not paths:
        raise ConfigError(f"--fonts {directory}: no {'/'.join(FONT_SUFFIXES)} files there")
    return [Face(p.stem, str(p)) for p in paths]


def parse_block(block: str) -> range:
    """`4E00-9FFF` -> range(0x4E00, 0xA000)."""
    try:
        lo, hi = (int(x, 16) for x in block.split("-"))
    except ValueError:
        raise ConfigError(f"--block {block!r}: expected FIRST-LAST in hex, e.g. 4E00-9FFF") from None
    if not 0 <= lo <= hi <= 0x10FFFF:
        raise ConfigError(f"--block {block!r}: expected 0 <= FIRST <= LAST <= 10FFFF")
    return range(lo, hi + 1)


def build(out_dir: str, *, classes: int = 0, skip_classes: int = 0, min_fonts: int = 8, size: int = 32,
          renders: int = 2, test_renders: int = 1, augment: float = 1.0, holdout_font: str = "", fonts: str = "",
          block: str = "4E00-9FFF", workers: int = 0, seed: int = 0, overwrite: bool = False) -> Path:
    """Build cjk-glyphs into `out_dir` (`classes` 0: every covered code point; `workers` 0: one per CPU)."""
    for key, value, low in (("classes", classes, 0), ("skip-classes", skip_classes, 0), ("size", size, 8),
                            ("renders", renders, 1), ("test-renders", test_renders, 0), ("workers", workers, 0)):
        if value < low:
            raise ConfigError(f"--{key} {value}: expected an integer >= {low}")
    faces, source = (dir_faces(fonts), f"fonts in {fonts}") if fonts else debian_faces()
    names = [f.name for f in faces]
    if holdout_font and holdout_font not in names:
        raise ConfigError(f"--holdout-font {holdout_font!r}: expected one of {', '.join(names)}")
    points = list(parse_block(block))
    covered = coverage(faces, points)  # [F, N]
    count = covered.sum(0)  # [N] faces per code point
    order = [i for i in sorted(range(len(points)), key=lambda i: (-count[i], points[i])) if count[i] >= min_fonts]
    chosen = order[skip_classes: skip_classes + classes] if classes else order[skip_classes:]
    if not chosen:
        raise DataError(f"no code point of {block} is covered by >= {min_fonts} of the {len(faces)} faces past the "
                        f"first {skip_classes}; lower --min-fonts or --skip-classes")
    chosen.sort()  # label ids in code point order
    seen = [f for f, name in enumerate(names) if name != holdout_font]
    test = Split("test", [names.index(holdout_font)], renders + test_renders, 1) if holdout_font else \
        Split("test", seen, test_renders, 1)
    path = write_glyph_dataset(
        out_dir, name="cjk-glyphs", source=source, faces=faces, codepoints=[points[i] for i in chosen],
        covered=covered[:, chosen], splits=[Split("train", seen, renders, 0), test], size=size, augment=augment,
        seed=seed, workers=workers or os.cpu_count() or 1, overwrite=overwrite,
        options=dict(classes=classes, skip_classes=skip_classes, min_fonts=min_fonts, size=size, renders=renders,
                     test_renders=test_renders, augment=augment, holdout_font=holdout_font, block=block, seed=seed))
    sample_grid(path, path / SAMPLES_FILE)  # logged with every training run on the set (xlc.tracking)
    return path
