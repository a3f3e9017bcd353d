"""Dependency direction (design.md §2): heads, backbones, eval and data never import Ray, DeepSpeed,
MLflow or the training package; baselines never import training either."""

import subprocess
import sys

import pytest

HEAVY = ("ray", "deepspeed", "mlflow")


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("xlc.heads", HEAVY + ("xlc.train", "xlc.data", "xlc.eval", "xlc.tracking", "faiss")),
        ("xlc.backbones", HEAVY + ("xlc.train", "xlc.tracking")),
        ("xlc.eval", HEAVY + ("xlc.train", "xlc.tracking")),
        ("xlc.data", HEAVY + ("xlc.train", "xlc.tracking")),
        ("xlc.data.stats", HEAVY + ("xlc.train", "xlc.tracking")),
        ("xlc.baselines.tree", HEAVY + ("xlc.train", "xlc.tracking")),
        ("xlc.baselines.knn", HEAVY + ("xlc.train", "xlc.tracking")),
        ("xlc.baselines.peers", HEAVY + ("xlc.train", "xlc.tracking", "napkinxc", "pecos")),  # libraries: on use
    ],
)
def test_package_imports_stay_light(package, forbidden):
    code = (f"import sys, {package}; "
            f"print(sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') for f in {forbidden!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"{package} pulls in {out.strip()}"
