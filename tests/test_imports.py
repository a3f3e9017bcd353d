"""Dependency direction (design.md §2): heads, backbones, eval and data never import Ray, DeepSpeed,
MLflow or the training package; baselines never import training either. Within heads, only `_dist.py`
touches torch.distributed."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("ray", "deepspeed", "mlflow")


LIGHT = [
    ("xlc.heads", HEAVY + ("xlc.train", "xlc.data", "xlc.eval", "xlc.tracking", "faiss")),
    ("xlc.backbones", HEAVY + ("xlc.train", "xlc.tracking")),
    ("xlc.eval", HEAVY + ("xlc.train", "xlc.tracking")),
    ("xlc.data", HEAVY + ("xlc.train", "xlc.tracking")),
    ("xlc.data.stats", HEAVY + ("xlc.train", "xlc.tracking")),
    ("xlc.baselines.tree", HEAVY + ("xlc.train", "xlc.tracking")),
    ("xlc.baselines.knn", HEAVY + ("xlc.train", "xlc.tracking")),
    # the Ray-free half of the training package: model assembly, evaluation, checkpoint format
    ("xlc.train.model", ("ray", "deepspeed", "mlflow")),
    ("xlc.train.evaluation", ("ray", "deepspeed", "mlflow")),
    ("xlc.train.checkpoint", ("ray", "deepspeed", "mlflow")),
    ("xlc.train.offline", ("ray", "deepspeed")),
    # the loop and the --local launcher: Ray only through ray_runtime.py, DeepSpeed and MLflow on use
    ("xlc.train.driver", ("ray", "deepspeed", "mlflow", "faiss")),
    ("xlc.train.schedule", ("ray", "deepspeed", "mlflow")),
    ("xlc.train.worker", ("ray", "deepspeed", "mlflow")),
    ("xlc.train.local", ("ray", "deepspeed", "mlflow", "faiss")),
    ("data_tools.stats", HEAVY + ("xlc.train", "xlc.tracking")),
    ("xlc.baselines.peers", HEAVY + ("xlc.train", "xlc.tracking", "napkinxc", "pecos")),  # libraries: on use
]

CONTROL = ("xlc.train.trainer", ("ray",))  # the Ray driver: the probe must see its import

# One interpreter imports what every package shares (numpy, pyarrow, torch: none is forbidden anywhere), then
# forks a fresh child per package, so each verdict sees exactly the modules that package pulls in.
_PROBE = """
import importlib, json, os, sys
import numpy, pyarrow, torch
verdicts = {}
for package, forbidden in json.loads(sys.argv[1]):
    read, write = os.pipe()
    if os.fork() == 0:
        os.close(read)
        try:
            importlib.import_module(package)
            found = sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in forbidden))
        except BaseException as e:
            found = [f"import failed: {e!r}"]
        os.write(write, json.dumps(found).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        verdicts[package] = json.loads(pipe.read())
    os.wait()
print(json.dumps(verdicts))
"""


@pytest.fixture(scope="module")
def pulled_in() -> dict[str, list[str]]:
    """package -> the forbidden modules importing it loads."""
    cases = LIGHT + [CONTROL]
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(cases)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_probe_sees_a_heavy_import(pulled_in):
    package, forbidden = CONTROL
    assert forbidden[0] in pulled_in[package]


@pytest.mark.parametrize("package, forbidden", LIGHT)
def test_package_imports_stay_light(package, forbidden, pulled_in):
    assert pulled_in[package] == [], f"{package} pulls in {pulled_in[package]}"


def _uses_torch_distributed(tree: ast.AST) -> bool:
    """`import torch.distributed[.x] [as y]`, `from torch.distributed[.x] import ...`, `from torch import
    distributed` or an attribute `torch.distributed` after a plain `import torch`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            names = [f"{node.value.id}.{node.attr}"]
        else:
            continue
        if any(name == "torch.distributed" or name.startswith("torch.distributed.") for name in names):
            return True
    return False


def test_only_heads_dist_uses_torch_distributed():
    """Collectives of the heads live in `xlc/heads/_dist.py` alone (style.md, principle 3)."""
    heads = Path(__file__).resolve().parents[1] / "xlc" / "heads"
    offenders = sorted(
        str(path.relative_to(heads))
        for path in heads.rglob("*.py")
        if path.name != "_dist.py" and _uses_torch_distributed(ast.parse(path.read_text(), str(path)))
    )
    assert offenders == [], f"xlc/heads modules other than _dist.py use torch.distributed: {offenders}"
    caught = [
        "import torch.distributed as dist",
        "from torch import distributed",
        "from torch.distributed import ReduceOp",
        "import torch\ntorch.distributed.all_reduce(t)",
    ]
    assert all(_uses_torch_distributed(ast.parse(code)) for code in caught)
    assert not _uses_torch_distributed(ast.parse("import torch\nfrom torch import nn"))


def test_xlc_never_imports_its_sibling_packages():
    """data_tools and launch plug their commands into `xlc` by entry points; xlc names neither."""
    offenders = [
        str(path) for path in (Path(__file__).parents[1] / "xlc").rglob("*.py")
        if any(isinstance(node, (ast.Import, ast.ImportFrom)) and any(
            name.split(".")[0] in ("data_tools", "launch")
            for name in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]))
            for node in ast.walk(ast.parse(path.read_text())))
    ]
    assert offenders == []


def _private_ray_imports(tree: ast.AST) -> list[str]:
    """Dotted names imported from ray whose path has a private part (`ray._private...`, `ray._raylet`,
    `ray.autoscaler._private...`, `from ray import _private`): Ray may change those in any release."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [n for n in names if n.split(".")[0] == "ray" and any(p.startswith("_") for p in n.split(".")[1:])]
    return found


def test_no_private_ray_imports():
    """xlc, launch and data_tools use Ray's public API only, so a Ray upgrade cannot break them silently."""
    root = Path(__file__).resolve().parents[1]
    offenders = {
        str(path.relative_to(root)): names
        for package in ("xlc", "launch", "data_tools")
        for path in (root / package).rglob("*.py")
        if (names := _private_ray_imports(ast.parse(path.read_text(), str(path))))
    }
    assert offenders == {}
    caught = ["import ray._private.utils", "from ray._private.authentication import x", "from ray import _raylet",
              "from ray.autoscaler._private.util import prepare_config"]
    assert all(_private_ray_imports(ast.parse(code)) for code in caught)
    assert not _private_ray_imports(ast.parse("import ray\nfrom ray.job_submission import JobSubmissionClient"))
