"""Open-set identification by identity templates: exact on separable embeddings, template = normalised mean of
normalised gallery rows, chance on shuffled labels, a probe without gallery identity is a miss."""

import numpy as np
import pytest

from xlc.baselines.retrieval import identification, templates
from xlc.errors import DataError


def clusters(identities, per, d=16, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(identities, d))
    labels = np.repeat(np.arange(identities), per)
    return centres[labels] + noise * rng.normal(size=(len(labels), d)) * np.linalg.norm(centres, axis=1).mean(), labels


def test_templates_are_normalised_means_of_normalised_rows():
    x = np.array([[3.0, 0.0], [0.0, 1.0], [0.0, -5.0]])
    ids, reps = templates(x, np.array([7, 7, 2]))
    assert ids.tolist() == [2, 7]
    np.testing.assert_allclose(reps, [[0.0, -1.0], [np.sqrt(0.5), np.sqrt(0.5)]], atol=1e-6)


def test_separable_identities_are_found_and_shuffled_ones_are_not():
    gallery, g_labels = clusters(40, 5)
    noise = np.random.default_rng(1).normal(size=(40, 16))
    probes, p_labels = gallery[::5] + 0.01 * noise, g_labels[::5]  # near each identity's first image
    got = identification(gallery, g_labels, probes, p_labels)
    assert got == {"open_set/top1": 1.0, "open_set/top5": 1.0, "open_set/identities": 40}
    shuffled = np.random.default_rng(2).permutation(g_labels)
    assert identification(gallery, shuffled, probes, p_labels)["open_set/top1"] < 0.3
    unseen = identification(gallery, g_labels, probes, p_labels + 1000)
    assert unseen["open_set/top1"] == unseen["open_set/top5"] == 0.0


def test_too_few_identities_for_top_k():
    gallery, labels = clusters(3, 2)
    with pytest.raises(DataError, match="has 3 identities; top-5 needs"):
        identification(gallery, labels, gallery, labels)
