"""Dataset builders: `BUILDERS[name](out_dir, **options) -> Path`, options bound from `--key value` pairs."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from data_tools.builders import cjk, debian, gcide, go_mfo, hpo, icd10cm, synthetic, wordnet
from xlc.errors import ConfigError

BUILDERS: dict[str, Callable[..., Path]] = {
    "cjk-glyphs": cjk.build,
    "debian-depends": debian.build,
    "gcide-headword": gcide.build,
    "go-mfo": go_mfo.build,
    "hpo": hpo.build,
    "icd10cm": icd10cm.build,
    "synthetic": synthetic.build,
    "wordnet-hypernym": wordnet.build,
}


def _convert(raw: str, default):
    """`raw` as the type of `default` (ints also accept `1e6`-style integral floats)."""
    if isinstance(default, int):
        value = float(raw)
        if not value.is_integer():
            raise ValueError(raw)
        return int(value)
    return type(default)(raw) if default is not None else raw


def parse_options(name: str, args: list[str]) -> dict:
    """`["--full-codes", "--seed", "3"]` -> `{"full_codes": True, "seed": 3}`, typed by the builder's defaults.

    A bare `--flag` (or `--no-flag`) sets a bool option; every other option takes one value.
    """
    if name not in BUILDERS:
        raise ConfigError(f"dataset {name!r}: expected one of {', '.join(sorted(BUILDERS))}")
    signature = inspect.signature(BUILDERS[name]).parameters.values()
    params = {p.name: p.default for p in signature if p.kind is p.KEYWORD_ONLY}
    valid = ", ".join("--" + k.replace("_", "-") for k in sorted(params))
    options: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        key = arg[2:].replace("-", "_") if arg.startswith("--") else None
        negated = key is not None and key.startswith("no_") and isinstance(params.get(key[3:]), bool)
        if negated:
            key = key[3:]
        if key not in params:
            raise ConfigError(f"build {name}: unknown option {arg!r}; valid options: {valid}")
        default = params[key]
        if isinstance(default, bool):
            options[key] = not negated
            i += 1
            continue
        if i + 1 >= len(args):
            raise ConfigError(f"build {name}: option {arg} needs a value")
        raw = args[i + 1]
        try:
            options[key] = _convert(raw, default)
        except ValueError:
            raise ConfigError(f"build {name}: {arg}={raw!r}: expected {type(default).__name__}") from None
        i += 2
    return options
