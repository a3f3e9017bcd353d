"""Protein sequence -> GO terms of one ontology (multi-label), from the Debian package `metastudent-data`
(UniProt/GOA 2014-01 BLAST databases with GO annotations).

The 225 MB .deb is downloaded into a temp dir and its data tar is streamed (`dpkg-deb --fsys-tarfile`): only
the chosen ontology's four files are read, into memory, so the 780 MB of unpacked files never touch the disk;
the temp dir is removed afterwards. The BLAST v4 protein db (.pin index, .phr ASN.1 headers `ACC|GO:...`,
.psq NCBIstdaa residues) is decoded without ncbi-blast+; labels come from goasp_annot.dat.
Full sizes: MFO 459,503 proteins / 6,471 terms / 3.87 per protein; BPO 486,000 / 14,134; CCO 392,822 /
1,999. `max_samples` (0 = all) takes a seeded subsample: decoding all of MFO is fast, but featurising it is not.
Features are tf-idf over character 3-mers (the shared KMER3 featuriser, about 9k dims, ~340 nnz per row).
Split 80/20 by identical sequence (`group_split`), so a sequence never sits on both sides; Swiss-Prot still
holds many close homologues, so test scores are optimistic.
"""

from __future__ import annotations

import re
import struct
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from data_tools.builders.packages import apt_download, cache_dir
from data_tools.builders.text import write_text_dataset
from data_tools.featurise import KMER3
from data_tools.splits import group_split
from xlc.errors import ConfigError, DataError
from xlc.progress import progress

PACKAGE = "metastudent-data"
ONTOLOGIES = ("MFO", "BPO", "CCO")
DATASET_DIR = "usr/share/metastudent-data/dataset_201401"
DB_FILES = ("goasp.fasta.pin", "goasp.fasta.phr", "goasp.fasta.psq", "goasp_annot.dat")
RESIDUES = "-ABCDEFGHIKLMNPQRSTVWXYZU*OJ"  # NCBIstdaa residue codes 0..27
_TO_LETTERS = bytes.maketrans(bytes(range(len(RESIDUES))), RESIDUES.encode())
# the BER VisibleString (tag 0x1a, short or 1-2 byte long length) holding "ACCESSION|GO:..."
_ACCESSION = re.compile(rb"\x1a(?:[\x00-\x7f]|\x81.|\x82..)([A-Za-z0-9_.-]+)\|GO:", re.S)


def read_members(deb: Path, names: set[str]) -> dict[str, bytes]:
    """The listed files (paths inside the package, no leading ./) of a .deb, streamed from its data tar."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in progress(tar, desc=f"{PACKAGE}: unpack"):
                name = member.name.removeprefix("./")
                if name in names:
                    found[name] = tar.extractfile(member).read()
                    if len(found) == len(names):
                        break
    finally:
        proc.kill()
        proc.wait()
    missing = sorted(names - set(found))
    if missing:
        raise DataError(f"{deb.name}: no {', '.join(missing)}; the package layout may have changed")
    return found


def blast_protein_db(pin: bytes, phr: bytes, psq: bytes, where: str) -> tuple[list[str], np.ndarray]:
    """(accession per sequence, sequence offsets [n+1] into psq) of a BLAST db v4 protein volume."""
    version, seq_type = struct.unpack(">ii", pin[:8])
    if version != 4 or seq_type != 1:
        raise DataError(f"{where}.pin: BLAST db version {version}, type {seq_type}; expected a v4 protein db")
    p = 8
    for _ in range(2):  # title, creation date: length-prefixed strings
        p += 4 + struct.unpack(">i", pin[p:p + 4])[0]
    n = struct.unpack(">i", pin[p:p + 4])[0]
    p += 4 + 8 + 4  # nseq, total residues (little-endian int64), max length
    header_offsets = np.frombuffer(pin, ">i4", n + 1, p).tolist()  # [n+1]
    seq_offsets = np.frombuffer(pin, ">i4", n + 1, p + 4 * (n + 1)).astype(np.int64)  # [n+1]
    accessions = []
    for i in progress(range(n), desc=f"{where}: headers"):
        m = _ACCESSION.search(phr, header_offsets[i], header_offsets[i + 1])
        if m is None:
            raise DataError(f"{where}.phr: sequence {i} has no `ACCESSION|GO:...` title")
        accessions.append(m.group(1).decode())
    return accessions, seq_offsets


def build(out_dir: str, *, ontology: str = "MFO", max_samples: int = 60_000, test_fraction: float = 0.2,
          seed: int = 0, overwrite: bool = False) -> Path:
    """Build go-{ontology} into `out_dir` from a seeded subsample of `max_samples` proteins (0 = all)."""
    if ontology not in ONTOLOGIES:
        raise ConfigError(f"go-mfo: --ontology={ontology!r}: expected one of {', '.join(ONTOLOGIES)}")
    if max_samples < 0:
        raise ConfigError(f"go-mfo: --max-samples={max_samples}: expected 0 (all) or a positive count")
    where = f"{PACKAGE} {DATASET_DIR}/{ontology}/goasp.fasta"
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{PACKAGE}-", dir=cache_dir()) as tmp:
        deb = apt_download(PACKAGE, Path(tmp))
        version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True).stdout
        files = read_members(deb, {f"{DATASET_DIR}/{ontology}/{name}" for name in DB_FILES})
    pin, phr, psq, annot = (files[f"{DATASET_DIR}/{ontology}/{name}"] for name in DB_FILES)
    accessions, seq_offsets = blast_protein_db(pin, phr, psq, where)
    del phr
    terms = {}
    for line in annot.decode().splitlines():
        accession, *go = line.split()
        terms[accession] = sorted(set(go))
    rows = np.array([i for i, a in enumerate(accessions) if terms.get(a)])  # [N_annotated]
    if max_samples and len(rows) > max_samples:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_samples, replace=False))
    # psq separates sequences with a NUL sentinel byte
    sequences = [psq[seq_offsets[i]:seq_offsets[i + 1]].rstrip(b"\x00").translate(_TO_LETTERS).decode()
                 for i in progress(rows, desc=f"{where}: sequences")]
    return write_text_dataset(
        out_dir, name=f"go-{ontology.lower()}", texts=sequences, labels=[terms[accessions[i]] for i in rows],
        test=group_split(np.array(sequences), test_fraction, seed), multi_label=True, featuriser=KMER3,
        source=f"Debian {PACKAGE} {version.strip() or 'unknown'}: dataset_201401/{ontology} (UniProt/GOA 2014-01)",
        options=dict(ontology=ontology, max_samples=max_samples, test_fraction=test_fraction, seed=seed),
        overwrite=overwrite)
