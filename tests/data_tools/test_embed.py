"""`xlc data embed`: MiniLM features of a text dataset, rows and labels kept, nothing half-written."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data_tools.builders.text import write_text_dataset
from data_tools.cli import main
from data_tools.embed import embed_dataset
from xlc.backbones.minilm import MiniLMEncoder
from xlc.data import label_counts, label_names, read_meta, split_files
from xlc.errors import DataError

TEXTS = ["Cholera due to Vibrio cholerae", "Typhoid fever", "Paratyphoid fever A", "Acute hepatitis A",
         "Malignant neoplasm of lip", "Iron deficiency anaemia", "Type 2 diabetes mellitus", "Essential hypertension",
         "Acute nasopharyngitis (common cold)", "Fracture of nasal bones", "Sprain of ankle", "Insomnia"]


def _rows(root, split):
    return pa.concat_tables(pq.read_table(f) for f in split_files(root, split)).to_pylist()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    labels = [[f"L{i % 4}"] + ([f"L{(i + 1) % 4}"] if i % 3 == 0 else []) for i in range(len(TEXTS))]
    test = np.arange(len(TEXTS)) % 4 == 0
    return write_text_dataset(tmp_path_factory.mktemp("src") / "tiny", name="tiny", source="test", texts=TEXTS,
                              labels=labels, test=test, multi_label=True, options={"seed": 0})


def test_embed_keeps_rows_and_replaces_features(source, tmp_path):
    out = embed_dataset(source, tmp_path / "emb", batch_size=5)  # 5: several batches, each sorted by length
    meta, src_meta = read_meta(out), read_meta(source)
    assert (meta.num_features, meta.text) == (384, True)
    assert (meta.num_train, meta.num_test) == (src_meta.num_train, src_meta.num_test)
    assert meta.options["featuriser"]["kind"] == "minilm" and meta.files == {}
    assert label_names(out) == label_names(source) and label_counts(out).tolist() == label_counts(source).tolist()
    encoder = MiniLMEncoder(hidden=[], max_length=128, freeze=True).eval()
    for split in ("train", "test"):
        rows, src_rows = _rows(out, split), _rows(source, split)
        assert [(r["labels"], r["text"]) for r in rows] == [(r["labels"], r["text"]) for r in src_rows]
        with torch.no_grad():
            expected = encoder.embed([r["text"] for r in rows], normalize=True).numpy()
        for row, vector in zip(rows, expected):
            assert row["feat_idx"] == list(range(384))
            np.testing.assert_allclose(row["feat_val"], vector, atol=1e-5)  # padding differs by batch: float noise
            assert np.linalg.norm(row["feat_val"]) == pytest.approx(1.0, abs=1e-5)


def test_embed_refuses_a_dataset_without_text(tmp_path, capsys):
    from data_tools.builders import synthetic

    src = synthetic.build(str(tmp_path / "syn"), samples=20, labels=10)
    with pytest.raises(DataError, match=r"syn/meta.json: text is false"):
        embed_dataset(src, tmp_path / "out")
    assert main(["embed", str(src), str(tmp_path / "out")]) == 2
    assert "text is false" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["syn"]
