"""Debian package description -> Depends / debtags / Maintainer, from apt's own index files.

Source: the release's `main` `Packages` and `Translation-en` lists under /var/lib/apt/lists, read through
`/usr/lib/apt/apt-helper cat-file` (handles .lz4/.gz/.xz). The image's apt config fetches no translations, so
when Translation-en is missing the builder runs `apt-get update -o Acquire::Languages=en` (needs root; it
writes /var/lib/apt/lists, as any `apt-get update` does).

Text: short description, ' . ', long description. Labels (`labels=`):
- `depends`: Depends + Pre-Depends, first alternative, no versions or arch qualifiers (`:any`), multi-label;
  55,851 packages (7,589 without Depends are dropped), 34,776 labels, 16,940 of them on one package.
- `debtags`: `Tag:` facet::value tags, tagged packages only (30,303), 598 labels, multi-label.
- `maintainer`: the Maintainer field, single-label, 63,440 packages, 2,248 labels.
Split by `Source` package (`group_split`): `-dev`/`-doc`/`libX` siblings share near-identical texts and
dependencies, so a random split would leak them. Labels with fewer than `min_label_count` train rows are then
dropped (rows left with no label too): a label seen once can only be memorised, never evaluated, and with
`depends` they are half the label space (0 keeps every label, including test-only ones).
Counts drift slightly with point releases; meta.json records the release's InRelease Date.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data_tools.builders.text import write_text_dataset
from data_tools.splits import group_split
from xlc.errors import ConfigError, DataError
from xlc.progress import progress

LISTS = Path("/var/lib/apt/lists")
APT_HELPER = "/usr/lib/apt/apt-helper"
UPDATE = ["apt-get", "update", "-o", "Acquire::Languages=en"]
LABEL_SETS = ("depends", "debtags", "maintainer")
# version constraints "(>= 1.2)", architecture lists "[amd64]", build profiles "<!nocheck>"
_QUALIFIERS = re.compile(r"\s*\(.*?\)|\s*\[.*?\]|\s*<.*?>")


def index_files(lists: Path = LISTS, update: bool = True) -> tuple[Path, Path, Path]:
    """(Packages, Translation-en, InRelease) of the release's main component: the largest Packages list
    (the release itself, not its -updates / -security overlays). Runs `apt-get update` with English
    translations once if Translation-en is missing."""
    packages = sorted(lists.glob("*_main_binary-*_Packages*"), key=lambda p: p.stat().st_size)
    if packages:
        prefix = packages[-1].name.partition("_main_binary-")[0]
        translations = list(lists.glob(f"{prefix}_main_i18n_Translation-en*"))
        if translations:
            release = lists / f"{prefix}_InRelease"
            return packages[-1], translations[0], release
    if update and shutil.which(UPDATE[0]):
        subprocess.run(UPDATE, capture_output=True)
        return index_files(lists, update=False)
    raise DataError(f"{lists}: no main Packages + Translation-en lists; run `{' '.join(UPDATE)}` as root "
                    f"(the builder tried) on a Debian/Ubuntu machine with access to its archive mirror")


def stanzas(path: Path) -> Iterator[dict[str, str]]:
    """RFC 822 stanzas of an apt list file (any compression), continuation lines joined with '\\n'."""
    try:
        proc = subprocess.Popen([APT_HELPER, "cat-file", str(path)], stdout=subprocess.PIPE, text=True,
                                encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise DataError(f"{APT_HELPER} not found: the debian builders need apt (Debian/Ubuntu)") from None
    record: dict[str, str] = {}
    key = None
    for line in proc.stdout:
        if line == "\n":
            if record:
                yield record
            record, key = {}, None
        elif line[0] in " \t" and key:
            record[key] += "\n" + line.rstrip("\n")
        else:
            key, _, value = line.partition(":")
            record[key] = value.strip()
    if record:
        yield record
    if proc.wait() != 0:
        raise DataError(f"`{APT_HELPER} cat-file {path}` failed (exit {proc.returncode})")


def first_alternatives(*fields: str) -> list[str]:
    """Package names of a Depends-style field: `a (>= 1) | b, c:any [amd64]` -> [a, c], sorted, unique."""
    names = set()
    for field in fields:
        for alternatives in field.replace("\n", " ").split(","):
            name = _QUALIFIERS.sub("", alternatives.split("|")[0]).split(":")[0].strip()
            if name:
                names.add(name)
    return sorted(names)


def parse_packages(packages: Path, translations: Path) -> list[dict]:
    """One record (pkg, source, text, depends, debtags, maintainer) per package with an English description."""
    descriptions = {(r["Package"], r["Description-md5"]): r["Description-en"]
                    for r in progress(stanzas(translations), desc="debian: Translation-en")
                    if "Description-en" in r}
    records = []
    for r in progress(stanzas(packages), desc="debian: Packages"):
        description = descriptions.get((r.get("Package"), r.get("Description-md5")))
        if description is None:
            continue
        short, *long = description.split("\n")
        records.append(dict(
            pkg=r["Package"], source=r.get("Source", r["Package"]).split(" ")[0],
            text=short.strip() + " . " + " ".join(line.strip() for line in long if line.strip() != "."),
            depends=first_alternatives(r.get("Depends", ""), r.get("Pre-Depends", "")),
            debtags=sorted({t.strip() for t in r.get("Tag", "").replace("\n", " ").split(",") if t.strip()}),
            maintainer=[r["Maintainer"]] if r.get("Maintainer") else []))
    if not records:
        raise DataError(f"{packages}: no package has a description in {translations.name}")
    return records


def drop_rare_labels(labels: list[list[str]], test: np.ndarray, min_count: int
                     ) -> tuple[list[list[str]], np.ndarray]:
    """Remove labels with fewer than `min_count` train rows; returns the non-empty rows' labels and their row
    numbers."""
    counts = Counter(label for row, is_test in zip(labels, test) if not is_test for label in row)
    kept = [[label for label in row if counts[label] >= min_count] for row in labels]
    rows = np.flatnonzero([bool(row) for row in kept])  # [N_kept]
    return [kept[i] for i in rows], rows


def _release(path: Path) -> str:
    fields = {}
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(": ")
            if key in ("Origin", "Suite", "Version", "Date") and key not in fields:
                fields[key] = value
    return " ".join(f"{k}={v}" for k, v in fields.items())


def build(out_dir: str, *, labels: str = "depends", min_label_count: int = 2, max_samples: int = 0,
          test_fraction: float = 0.2, seed: int = 0, overwrite: bool = False) -> Path:
    """Build debian-{labels} into `out_dir`; rows grouped by Source never straddle train and test.
    `max_samples` > 0 keeps a seeded random subset of the packages (quick builds, tests)."""
    if labels not in LABEL_SETS:
        raise ConfigError(f"debian-depends: --labels={labels!r}: expected one of {', '.join(LABEL_SETS)}")
    packages, translations, release = index_files()
    records = [r for r in parse_packages(packages, translations) if r[labels]]
    if 0 < max_samples < len(records):
        keep = np.sort(np.random.default_rng(seed).choice(len(records), max_samples, replace=False))
        records = [records[i] for i in keep]
    test = group_split(np.array([r["source"] for r in records]), test_fraction, seed)  # [N]
    texts, targets = [r["text"] for r in records], [r[labels] for r in records]
    if min_label_count > 0:
        targets, rows = drop_rare_labels(targets, test, min_label_count)
        texts, test = [texts[i] for i in rows], test[rows]
    return write_text_dataset(
        out_dir, name=f"debian-{labels}", texts=texts, labels=targets, test=test,
        multi_label=labels != "maintainer",
        source=f"Debian archive ({_release(release)}): {packages.name} + {translations.name}",
        options=dict(labels=labels, min_label_count=min_label_count, max_samples=max_samples,
                     test_fraction=test_fraction, seed=seed),
        overwrite=overwrite)
