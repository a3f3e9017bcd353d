"""GCIDE + WordNet definition -> headword (single-label, a reverse dictionary), from the Debian packages
`dict-gcide` (GCIDE 0.48) and `wordnet-base` (WordNet 3.0), downloaded and unpacked, never installed (installing
dict-gcide would pull in dictd and update-inetd).

GCIDE: each article of the dictzip file (gzip-readable; offsets in gcide.index, base64 digits) is split on
blank lines into sense blocks; quotations (indented 10+ spaces), `Note:`/`Syn:`/`Usage:` blocks, phrase
sub-entries (`{Coasting lead}, ...`, which define another term) and source tags such as `[1913 Webster]` are
dropped, as are the article's header (headword, \\pro*nun"ci*a`tion\\, part of speech, [etymology]) and sense
numbers: 177k definitions. The header stripping is heuristic; blocks whose start still looks like
pronunciation or etymology are dropped.
WordNet: the gloss's definition (up to the first ';', without examples) once per lemma of its synset, 207k.
Headwords with fewer than `min_defs` definitions are dropped (default 3: 176k samples, 29.8k headwords; 1
keeps all 384k samples over 205k headwords, most of them untestable singletons). Labels are lowercased
headwords. Split 80/20 stratified by headword, every test headword present in train.
"""

from __future__ import annotations

import gzip
import re
from collections import Counter
from pathlib import Path

import numpy as np

from data_tools.builders.packages import apt_package_dir, apt_package_version
from data_tools.builders.text import write_text_dataset
from data_tools.builders.wordnet import PACKAGE as WORDNET, parse_synsets
from data_tools.splits import stratified_split
from xlc.errors import ConfigError, DataError
from xlc.progress import progress

PACKAGE = "dict-gcide"
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
DROP_BLOCK = re.compile(r"^(?: {10}|\s*(?:Note|Syn|Usage|Specifically|Hence|See|Antonym):|\s*--|\s*(?:\d+\.\s*)?\{)")
SOURCE_TAG = re.compile(r"\[(?:1913 Webster|Webster 1913|WordNet|PJC)[^\]]*\]")
SENSE_NUMBER = re.compile(r"^\s*(?:\d+\.|\([a-z]\))\s*")
# pieces of an article header after the headword: \pron\, (alt. pron), n., v. t., [etym.], {inflections}, `;`
HEADER_PIECE = re.compile(r"\s*(?:\\[^\\]*\\|\([^()]*\)|\{[^{}]*\}|\b[a-z]{1,5}\.|[,;&:]|\bor\b|\band\b)")
# what the reference recipe found left over from headers: etymology and pronunciation fragments
HEADER_LEFTOVER = re.compile(r"\[(OE|AS|L|F|Gr|LL)\.|\\|\b[nv]\. [ti]\.")


def _b64(digits: str) -> int:
    value = 0
    for c in digits:
        value = value * 64 + B64.index(c)
    return value


def _skip_bracket(text: str, i: int) -> int:
    """Index just past the `[...]` that opens at text[i] (brackets nest, e.g. `[^u]` inside etymology)."""
    depth = 0
    for j in range(i, len(text)):
        depth += {"[": 1, "]": -1}.get(text[j], 0)
        if depth == 0:
            return j + 1
    return len(text)


def strip_header(block: str) -> str:
    """The first block minus its header: everything up to the first piece that is not header syntax."""
    i = 0
    while i < len(block):
        if block[i] == "[":
            i = _skip_bracket(block, i)
            continue
        m = HEADER_PIECE.match(block, i)
        if m is None or m.end() == i:
            if block[i].isspace():
                i += 1
                continue
            break
        i = m.end()
    return block[i:]


def article_definitions(article: str) -> tuple[str, list[str]]:
    """(lowercased headword, definition texts) of one GCIDE article."""
    headword, marker, rest = article.partition(" \\")
    if not marker or "\n" in headword:  # no `Headword \\pron\\` header: not an entry we can label
        return "", []
    definitions = []
    for n, block in enumerate(re.split(r"\n\s*\n", rest)):
        if DROP_BLOCK.match(block):
            continue
        text = strip_header("\\" + block) if n == 0 else block
        text = " ".join(SOURCE_TAG.sub(" ", SENSE_NUMBER.sub("", text)).replace("{", "").replace("}", "").split())
        if len(text) > 2 and not HEADER_LEFTOVER.search(text[:80]):
            definitions.append(text)
    return " ".join(headword.split()).lower(), definitions


def gcide_samples(dictd: Path) -> list[tuple[str, str]]:
    """(definition, headword) for every GCIDE article listed in gcide.index."""
    index, dictionary = dictd / "gcide.index", dictd / "gcide.dict.dz"
    for path in (index, dictionary):
        if not path.is_file():
            raise DataError(f"{path}: missing; is {PACKAGE} unpacked correctly?")
    articles = set()
    with index.open(encoding="utf-8", errors="replace") as f:
        for row, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3:
                raise DataError(f"{index} line {row}: expected headword, offset, length separated by tabs")
            if not fields[0].startswith("00-database"):
                articles.add((_b64(fields[1]), _b64(fields[2])))  # several headwords can share one article
    with gzip.open(dictionary) as f:  # dictzip is gzip with a random-access index we do not need
        data = f.read()
    samples = []
    for offset, length in progress(sorted(articles), desc="gcide: articles"):
        headword, definitions = article_definitions(data[offset:offset + length].decode("utf-8", "replace"))
        samples.extend((text, headword) for text in definitions)
    return samples


def wordnet_samples(wordnet_dir: Path) -> list[tuple[str, str]]:
    """(first gloss segment, lemma) for every lemma of every WordNet synset."""
    return [(gloss, word) for synset in parse_synsets(wordnet_dir).values()
            if (gloss := synset["gloss"].split(";")[0].strip()) for word in synset["words"]]


def build(out_dir: str, *, min_defs: int = 3, test_fraction: float = 0.2, seed: int = 0,
          overwrite: bool = False) -> Path:
    """Build gcide-headword into `out_dir`."""
    if min_defs < 1:
        raise ConfigError(f"gcide-headword: --min-defs={min_defs}: expected an integer >= 1")
    samples = (gcide_samples(apt_package_dir(PACKAGE) / "usr" / "share" / "dictd")
               + wordnet_samples(apt_package_dir(WORDNET) / "usr" / "share" / "wordnet"))
    counts = Counter(headword for _, headword in samples)
    samples = [(text, headword) for text, headword in samples if counts[headword] >= min_defs]
    index = {headword: i for i, headword in enumerate(sorted(counts))}
    y = np.array([index[headword] for _, headword in samples])  # [N] for stratification
    return write_text_dataset(
        out_dir, name="gcide-headword", texts=[text for text, _ in samples],
        labels=[[headword] for _, headword in samples], test=stratified_split(y, test_fraction, seed),
        multi_label=False,
        source=f"Debian {PACKAGE} {apt_package_version(PACKAGE)} + {WORDNET} {apt_package_version(WORDNET)}",
        options=dict(min_defs=min_defs, test_fraction=test_fraction, seed=seed), overwrite=overwrite)
