"""kNN baseline: similarity-weighted votes equal a brute-force float64 loop; neighbours' labels come back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_close
from xlc.baselines.knn import KNNClassifier
from xlc.errors import ConfigError


def test_votes_match_brute_force():
    """Reference: cos = normalise(Q) normalise(X)^T; top-k neighbours; score_l = sum of cos over those with l."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 8, generator=g)
    y = torch.randint(0, 12, (60, 3), generator=g)
    y[torch.rand(60, 3, generator=g) < 0.4] = -1
    q = torch.randn(9, 8, generator=g)
    knn = KNNClassifier(k=5).fit(x, y, 12)
    scores, labels = knn.predict(q, 4)
    cos = F.normalize(q.double(), dim=1) @ F.normalize(x.double(), dim=1).T  # [9, 60]
    for i in range(9):
        s, nb = cos[i].topk(5)
        votes = {}
        for sim, j in zip(s.tolist(), nb.tolist()):
            for lab in set(y[j].tolist()) - {-1}:
                votes[lab] = votes.get(lab, 0.0) + sim
        ranked = sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))[:4]
        ranked += [(-1, 0.0)] * (4 - len(ranked))
        assert labels[i].tolist() == [lab for lab, _ in ranked]
        assert_close(scores[i].double(), torch.tensor([v for _, v in ranked], dtype=torch.float64), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_predicts_neighbours_labels(index):
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(20, 16, generator=g)
    y = torch.arange(20).repeat_interleave(10)  # [200] single-label
    x = centers[y] + 0.1 * torch.randn(200, 16, generator=g)
    knn = KNNClassifier(k=10, index=index).fit(x, y, 20)
    _, top = knn.predict(centers + 0.1 * torch.randn(20, 16, generator=g), 3)
    assert (top[:, 0] == torch.arange(20)).all()


def test_input_is_not_modified_and_bad_index_is_named():
    x = torch.randn(10, 4) * 3
    before = x.clone()
    KNNClassifier(k=3).fit(x, torch.arange(10) % 2, 2).predict(x, 2)
    assert (x == before).all()
    with pytest.raises(ConfigError, match="knn.index='ivf'"):
        KNNClassifier(index="ivf").fit(x, torch.zeros(10, dtype=torch.long), 2)


def test_two_faiss_builds_are_refused(monkeypatch):
    import xlc.baselines as baselines
    from xlc.errors import ConfigError

    monkeypatch.setattr(baselines, "distribution", lambda name: name)  # every build "installed"
    with pytest.raises(ConfigError, match=r"faiss-cpu and faiss-gpu-cu12 are installed.*'xlc\[cpu\]'"):
        baselines.check_faiss_build()
