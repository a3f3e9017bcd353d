"""Non-neural baselines over FAISS: PECOS-style label tree (`tree`), kNN voting (`knn`), ANN top-k (`ann`),
and the peer libraries napkinXC and PECOS (`peers`)."""

from importlib.metadata import PackageNotFoundError, distribution

from xlc.errors import ConfigError


def check_faiss_build() -> None:
    """Exactly one FAISS build may be installed: both write the module `faiss`, and whichever was installed
    last wins, silently (a GPU cluster then runs k-means on the CPU)."""
    builds = []
    for name in ("faiss-cpu", "faiss-gpu-cu12"):
        try:
            distribution(name)
            builds.append(name)
        except PackageNotFoundError:
            pass
    if len(builds) > 1:
        raise ConfigError(f"both {' and '.join(builds)} are installed; install exactly one: "
                          "pip install 'xlc[cpu]' or 'xlc[gpu]' (uninstall the other first)")


check_faiss_build()

from xlc.baselines.ann import ANNTopK, ann_recall  # noqa: E402
from xlc.baselines.knn import KNNClassifier  # noqa: E402
from xlc.baselines.tree import build_hierarchy, pifa  # noqa: E402

__all__ = ["ANNTopK", "KNNClassifier", "ann_recall", "build_hierarchy", "pifa"]
