"""`xlc data build cjk-glyphs --fonts DIR`: a tiny rendered-glyph set from the font files on this machine
(DejaVu's Latin capitals), through the CLI, read back by `xlc.data`; the Debian CJK build is in
test_builders_packages.py."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from data_tools.cli import app
from data_tools.glyph_render import Face, coverage
from xlc.data import iter_batches, label_counts, label_names, read_meta, split_files

FONTS = Path("/usr/share/fonts/truetype/dejavu")
pytestmark = pytest.mark.skipif(not FONTS.is_dir(), reason=f"needs the DejaVu fonts under {FONTS} (fonts-dejavu-core)")
FACES = sorted(p for p in FONTS.glob("*.ttf"))


def build(tmp_path, *options, block="0041-0046", name="g"):
    out = tmp_path / name
    args = ["build", "cjk-glyphs", str(out), "--fonts", str(FONTS), "--block", block, "--min-fonts", "1",
            "--size", "16", "--renders", "1", "--workers", "1", *options]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def pixels(path, split):
    return b"".join(pq.read_table(f, columns=["image"]).column("image").combine_chunks().buffers()[2].to_pybytes()
                    for f in split_files(path, split))


def test_build_rows_images_and_reading(tmp_path):
    path = build(tmp_path)
    meta = read_meta(path)
    covered = coverage([Face(p.stem, str(p)) for p in FACES], range(0x41, 0x47))  # [F, 6]
    assert meta.image == {"height": 16, "width": 16, "channels": 1} and not meta.multi_label
    assert label_names(path) == [f"U+{c:04X} {chr(c)}" for c in range(0x41, 0x47)]
    # one train and one test render per (class, face that has the glyph)
    assert (label_counts(path) == covered.sum(0)).all()
    assert meta.num_train == meta.num_test == covered.sum()
    batches = list(iter_batches(path, "train", 32))
    images = np.concatenate([b.image.numpy() for b in batches])  # [N, 256]
    assert images.dtype == np.uint8 and images.shape == (meta.num_train, 256)
    # ink near every centre (the faintest: ExtraLight, thinned and blurred)
    assert (images.reshape(-1, 16, 16)[:, 4:12, 4:12].max(axis=(1, 2)) > 60).all()
    assert pixels(path, "train") != pixels(path, "test")  # held-out augmentations, not copies
    assert (path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the sample grid, built with the set


def test_seeded_and_independent_of_workers(tmp_path):
    one = build(tmp_path, "--seed", "3", name="a")
    two = build(tmp_path, "--seed", "3", "--workers", "2", name="b")
    assert pixels(one, "train") == pixels(two, "train") and pixels(one, "test") == pixels(two, "test")


def test_holdout_font_and_disjoint_class_ranges(tmp_path):
    held = FACES[0].stem
    path = build(tmp_path, "--holdout-font", held, "--test-renders", "2", name="h")
    covered = coverage([Face(p.stem, str(p)) for p in FACES], range(0x41, 0x47))  # [F, 6]
    meta = read_meta(path)
    assert meta.num_train == covered[1:].sum() and meta.num_test == 3 * covered[0].sum()
    first = build(tmp_path, "--classes", "3", "--block", "0041-005A", name="first")
    rest = build(tmp_path, "--classes", "3", "--skip-classes", "3", "--block", "0041-005A", name="rest")
    assert len(label_names(first)) == len(label_names(rest)) == 3
    assert not set(label_names(first)) & set(label_names(rest))


def test_stats_draws_a_sample_grid(tmp_path):
    path = build(tmp_path)
    result = CliRunner().invoke(app, ["stats", str(path)])
    assert result.exit_code == 0, result.output
    assert (path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_options_name_the_option(tmp_path):
    for options, message in ((["--holdout-font", "nope"], "--holdout-font 'nope': expected one of"),
                             (["--block", "XYZ"], "--block 'XYZ'"), (["--renders", "0"], "--renders 0")):
        result = CliRunner().invoke(app, ["build", "cjk-glyphs", str(tmp_path / "x"), "--fonts", str(FONTS),
                                          *options])
        assert result.exit_code != 0 and message in str(result.exception), options
