"""WordNet 3.0 gloss -> direct hypernym synset(s), from the Debian package `wordnet-base` (downloaded and
unpacked, never installed).

95,322 synsets have a hypernym (`@`, or `@i` for instances); 20,472 distinct hypernyms are the labels, 7,648
of them on one synset; 1.02 labels per sample, so multi-label. The text is the whole gloss (definition and
example sentences). Labels are named `offset+pos` with the hypernym's first lemma, e.g.
`02084071n:dog`, so they sort by synset id and stay readable. Split 80/20 stratified by the first hypernym,
so every test row's first label has train rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_tools.builders.packages import apt_package_dir, apt_package_version
from data_tools.builders.text import write_text_dataset
from data_tools.splits import stratified_split
from xlc.errors import DataError

PACKAGE = "wordnet-base"
POS_FILES = ("noun", "verb", "adj", "adv")
HYPERNYM = ("@", "@i")


def parse_synsets(wordnet_dir: Path) -> dict[str, dict]:
    """synset id (`offset` + pos, satellites `s` folded into `a`) -> words, gloss, hypernym ids, from the
    `data.{noun,verb,adj,adv}` files."""
    synsets: dict[str, dict] = {}
    for pos in POS_FILES:
        path = wordnet_dir / f"data.{pos}"
        if not path.is_file():
            raise DataError(f"{path}: missing; is {PACKAGE} unpacked correctly?")
        with path.open(encoding="latin-1") as f:
            for row, line in enumerate(f, 1):
                if line.startswith("  "):  # licence header
                    continue
                head, _, gloss = line.partition(" | ")
                t = head.split()
                try:
                    offset, kind, num_words = t[0], t[2], int(t[3], 16)
                    words = [t[4 + 2 * i].split("(")[0].replace("_", " ").lower() for i in range(num_words)]
                    i = 4 + 2 * num_words
                    pointers = [t[i + 1 + 4 * p: i + 5 + 4 * p] for p in range(int(t[i]))]  # sym, offset, pos, src/tgt
                except (IndexError, ValueError):
                    raise DataError(f"{path} line {row}: not a WordNet data line: {line[:80]!r}") from None
                synsets[offset + kind.replace("s", "a")] = dict(
                    words=words, gloss=gloss.strip(),
                    hypernyms=[o + p.replace("s", "a") for sym, o, p, _ in pointers if sym in HYPERNYM])
    return synsets


def build(out_dir: str, *, test_fraction: float = 0.2, seed: int = 0, overwrite: bool = False) -> Path:
    """Build wordnet-hypernym into `out_dir`."""
    root = apt_package_dir(PACKAGE)
    synsets = parse_synsets(root / "usr" / "share" / "wordnet")
    samples = [s for s in synsets.values() if s["hypernyms"] and s["gloss"]]
    labels = [[f"{h}:{synsets[h]['words'][0]}" for h in s["hypernyms"]] for s in samples]
    _, first = np.unique([min(row) for row in labels], return_inverse=True)  # [N] for stratification
    return write_text_dataset(
        out_dir, name="wordnet-hypernym", texts=[s["gloss"] for s in samples], labels=labels,
        test=stratified_split(first, test_fraction, seed), multi_label=True,
        source=f"Debian {PACKAGE} {apt_package_version(PACKAGE)} (WordNet 3.0)",
        options=dict(test_fraction=test_fraction, seed=seed), overwrite=overwrite)
