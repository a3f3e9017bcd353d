"""Non-neural baselines over FAISS: PECOS-style label tree (`tree`), kNN voting (`knn`), ANN top-k (`ann`)."""

from xlc.baselines.ann import ANNTopK, ann_recall
from xlc.baselines.knn import KNNClassifier
from xlc.baselines.tree import build_hierarchy, pifa

__all__ = ["ANNTopK", "KNNClassifier", "ann_recall", "build_hierarchy", "pifa"]
