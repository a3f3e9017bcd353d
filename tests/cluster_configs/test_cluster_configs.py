"""Every file under cluster_configs/ parses and carries the fields xlc and Ray rely on.

Ray launcher YAMLs go through Ray's own `prepare_config` + `validate_config` (what `ray up` runs
before touching a cloud); DeepSpeed JSONs go through xlc's loader and DeepSpeed's own config parser;
run configs go through `xlc.config`.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "cluster_configs"
LAUNCHER = ["aws-gpu.yaml", "gcp-gpu.yaml", "local.yaml"]
RAYJOB = "kuberay-rayjob.yaml"
DEEPSPEED = sorted(p.name for p in (CONFIGS / "deepspeed").glob("*.json"))
EXAMPLES = sorted(p.name for p in (CONFIGS / "examples").glob("*.yaml") if not p.name.startswith("compare-"))
COMPARES = sorted(p.name for p in (CONFIGS / "examples").glob("compare-*.yaml"))


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_every_file_is_checked_here():
    """A new file under cluster_configs/ must join one of the lists above (and so be tested)."""
    known = {CONFIGS / n for n in [*LAUNCHER, RAYJOB]}
    known |= {CONFIGS / "deepspeed" / n for n in DEEPSPEED}
    known |= {CONFIGS / "examples" / n for n in [*EXAMPLES, *COMPARES]}
    present = {p for p in CONFIGS.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml", ".json")}
    assert present == known, f"unchecked: {sorted(map(str, present - known))}"
    assert len(DEEPSPEED) == 9 and EXAMPLES and COMPARES


@pytest.mark.parametrize("name", LAUNCHER)
def test_ray_launcher_config_validates(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _yaml(CONFIGS / name)
    cfg = prepare_config(raw)
    validate_config(cfg)  # Ray's JSON schema + node-type consistency, as `ray up` does
    assert cfg["cluster_name"].startswith("xlc")
    assert cfg["provider"]["type"] in ("aws", "gcp", "local")
    assert cfg["head_node_type"] in cfg["available_node_types"]
    for node_type in cfg["available_node_types"].values():
        assert "resources" in node_type and "node_config" in node_type
    setup = " ".join(cfg["setup_commands"])
    assert "-c " in setup and "constraints.txt" in setup and "pip install" in setup  # pinned install of xlc
    assert raw["file_mounts"], "the checkout must be mounted for the install above"
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--disable-usage-stats" in head_start


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "gcp-gpu.yaml"])
def test_cloud_configs_have_gpu_workers_and_matching_image(name):
    cfg = _yaml(CONFIGS / name)
    workers = {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}
    assert workers and all(v["resources"].get("GPU", 0) >= 1 for v in workers.values())
    assert all(v["max_workers"] <= cfg["max_workers"] for v in workers.values())
    # The image's Ray must equal the client's (ray job submit refuses a version mismatch at best).
    assert cfg["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    if cfg["provider"]["type"] == "gcp":
        for v in workers.values():
            assert v["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE"  # required with GPUs


def test_local_config_binds_loopback():
    cfg = _yaml(CONFIGS / "local.yaml")
    assert cfg["provider"]["head_ip"] == "127.0.0.1"
    assert "--dashboard-host=127.0.0.1" in " ".join(cfg["head_start_ray_commands"])


# A literal secret: NAME=value where the value is not a shell expansion ($VAR, "$(...)").
LITERAL_SECRET = re.compile(r"(RAY_AUTH_TOKEN|PASSWORD|SECRET_KEY)=(?![\"']?\$)\S")


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_secure_defaults(name):
    """Ray token auth on every node with the token copied from your machine, the dashboard on loopback (reached
    by `ray dashboard` port-forwarding), and any MLflow server behind MLflow's basic-auth app."""
    raw = _yaml(CONFIGS / name)
    starts = [c for c in raw["head_start_ray_commands"] + raw["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts)
    head = next(c for c in starts if "--head" in c)
    assert "--dashboard-host=127.0.0.1" in head and "--dashboard-host=0.0.0.0" not in head
    mounts = raw["file_mounts"]
    assert any(remote.endswith("/.ray/auth_token") and local == "~/.ray/auth_token" for remote, local in mounts.items())
    servers = [c for c in raw["head_start_ray_commands"] if "mlflow server" in c]
    for server in servers:
        assert "--app-name basic-auth" in server
        assert 'MLFLOW_AUTH_ADMIN_PASSWORD="$MLFLOW_TRACKING_PASSWORD"' in server  # set from the mounted env file
    if servers:  # every Ray process (the driver, each rank 0) gets MLflow's client credentials from the same file
        assert mounts["/home/ray/.xlc/mlflow.env"] == "~/.xlc/mlflow.env"
        assert all(". ~/.xlc/mlflow.env" in c for c in starts)
        assert "mlflow[auth]" in " ".join(raw["head_setup_commands"])
    assert not LITERAL_SECRET.search((CONFIGS / name).read_text())


def _load_run_config(path: Path, overrides=()):
    from xlc.config import load

    return load(path, list(overrides))


def test_kuberay_rayjob():
    job = _yaml(CONFIGS / RAYJOB)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["rayClusterSpec"]["rayVersion"] == ray.__version__
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"

    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["xlc", "train"]
    config_path = ROOT / Path(argv[2]).relative_to("/home/ray/xlc")  # the Dockerfile's WORKDIR
    cfg = _load_run_config(config_path, argv[3:])
    assert cfg.use_gpu
    assert cfg.storage.path.startswith("/mnt/xlc/") and cfg.storage.shared  # the ReadWriteMany volume, every pod
    groups = spec["rayClusterSpec"]["workerGroupSpecs"]
    gpus = sum(
        g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) for g in groups
    )
    assert cfg.workers == gpus, "one xlc worker per GPU"
    for g in groups:
        res = g["template"]["spec"]["containers"][0]["resources"]
        assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"]


def test_kuberay_rayjob_secure_defaults():
    """Token auth by the operator; the dashboard on the pod network only because the token guards it (reached by
    `kubectl port-forward`: no Service is exposed); MLflow credentials only from a Secret, in every pod."""
    spec = _yaml(CONFIGS / RAYJOB)["spec"]["rayClusterSpec"]
    assert spec["authOptions"] == {"mode": "token"}
    host = spec["headGroupSpec"]["rayStartParams"].get("dashboard-host", "127.0.0.1")
    assert host == "127.0.0.1" or spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress")
    pods = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
    for pod in pods:
        env = {e["name"]: e for e in pod["template"]["spec"]["containers"][0]["env"]}
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"] == "xlc-mlflow"
    assert not LITERAL_SECRET.search((CONFIGS / RAYJOB).read_text())
    assert LITERAL_SECRET.search("RAY_AUTH_TOKEN=abc") and not LITERAL_SECRET.search('A_PASSWORD="$B" SECRET_KEY=$C')


def test_dockerfile_matches_ray_and_rayjob_workdir():
    text = (ROOT / "launch" / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-py311-gpu" in text
    assert "WORKDIR /home/ray/xlc" in text and "-c constraints.txt" in text
    assert re.search(r"^ENV .*RAY_AUTH_MODE=token", text, re.M) and '"mlflow[auth]"' in text
    assert not LITERAL_SECRET.search(text)


@pytest.mark.parametrize("name", DEEPSPEED)
def test_deepspeed_config(name):
    """Filled in by xlc's loader ("auto" -> run config values), then parsed by DeepSpeed itself."""
    from xlc.train.engine import deepspeed_config, select_accelerator

    select_accelerator(False)
    from deepspeed.runtime.config import DeepSpeedConfig

    raw = json.loads((CONFIGS / "deepspeed" / name).read_text())
    assert {"train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"} <= set(raw)
    assert raw["optimizer"]["type"] == "AdamW" and raw["optimizer"]["params"]["torch_adam"] is True
    filled = deepspeed_config(str(CONFIGS / "deepspeed" / name), batch_size=64, lr=3e-4, weight_decay=0.01,
                              clip_grad_norm=0.5)
    ds = DeepSpeedConfig(filled)

    m = re.fullmatch(r"zero(\d)_(bf16|fp16)\.json|cpu_fp32\.json", name)
    assert m, name
    stage, precision = (int(m[1]), m[2]) if m[1] else (0, "fp32")
    assert ds.zero_optimization_stage == stage
    assert (ds.bfloat16_config.enabled, ds.float16_config.enabled) == (precision == "bf16", precision == "fp16")
    # world size 1 here: global batch = micro batch x accumulation x world
    assert ds.train_micro_batch_size_per_gpu == 64 and ds.train_batch_size == 64 * ds.gradient_accumulation_steps
    assert ds.optimizer_name == "adamw" and ds.optimizer_params["lr"] == 3e-4 and ds.optimizer_params["weight_decay"] == 0.01
    assert ds.gradient_clipping == 0.5  # "auto": the run config's train.clip_grad_norm


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_run_config_loads(name):
    path = CONFIGS / "examples" / name
    cfg = _load_run_config(path)
    assert cfg.name == path.stem, "the run name (MLflow name and resume key) matches the file name"
    if cfg.deepspeed is not None:
        assert (ROOT / cfg.deepspeed).is_file(), f"{name}: deepspeed={cfg.deepspeed} (relative to the repo root)"
        assert cfg.use_gpu or "cpu" in cfg.deepspeed, "fp16/bf16 JSONs are for GPU runs"
    assert cfg.data.startswith("data/")
    assert cfg.tracking.uri is None and cfg.storage.path is None, "cluster values come from submit overrides"


def test_example_run_configs_cover_the_main_comparisons():
    heads = {name: _yaml(CONFIGS / "examples" / name)["head"]["name"] for name in EXAMPLES}
    synthetic = {h for n, h in heads.items() if n.startswith("synthetic-1m-")}
    assert synthetic == {"sharded_softmax", "mhp", "mhc_sharded"}
    assert {h for n, h in heads.items() if n.startswith("icd10cm-")} == {"mhp", "mhs", "softmax", "chunked_softmax"}
    backbones = {_yaml(CONFIGS / "examples" / name)["backbone"]["name"] for name in EXAMPLES}
    assert backbones == {"mlp", "xmlcnn", "minilm"}
    assert {h for n, h in heads.items() if n.startswith("debian-depends-")} == {"bce", "mhc", "sharded_bce"}
    assert any(n.startswith("wordnet-hypernym-") for n in heads) and any(n.startswith("go-mfo-") for n in heads)


@pytest.mark.parametrize("name", COMPARES)
def test_compare_config_methods_load(name):
    """Read by `xlc compare`'s own loader: every method is a valid run config, named <compare>-<method>."""
    from xlc.compare import load_compare

    path = CONFIGS / "examples" / name
    spec = _yaml(path)
    assert set(spec) == {"name", "base", "methods"} and spec["name"] == path.stem
    compare_name, experiment, methods, _ = load_compare(path, [])
    assert [m for m, *_ in methods] == [m["name"] for m in spec["methods"]]
    assert len({m for m, *_ in methods}) == len(methods) >= 2
    assert all(cfg.name == f"{compare_name}-{m}" and cfg.tracking.experiment == experiment for m, cfg, _ in methods)
    varied = {(cfg.data, cfg.backbone.name, cfg.head.name, repr(cfg.head.options), repr(b)) for _, cfg, b in methods}
    assert len(varied) == len(methods), "every method changes the data, backbone, head or baseline (or its options)"
    if name == "compare-icd10cm.yaml":
        assert len({cfg.head.name for _, cfg, _ in methods}) >= 3
        # A section override replaces the head: no base head option leaks into another head.
        assert {m: cfg.head.options for m, cfg, _ in methods}["mhp-3"] == {"num_heads": 3}
    if name == "compare-icd10cm-backbones.yaml":
        assert {cfg.backbone.name for _, cfg, _ in methods} == {"mlp", "xmlcnn"}
        assert {cfg.data for _, cfg, _ in methods} == {"data/icd10cm", "data/icd10cm-minilm"}
