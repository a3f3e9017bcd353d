"""`xlc compare`: several methods on one dataset and backbone, one MLflow experiment, one table and plots.

Compare config (YAML):
    name: compare-icd10cm            # experiment name (unless `experiment:` is given) and run-name prefix
    base: icd10cm-mhp.yaml           # a run config: a path (relative to this file) or an inline mapping
    methods:                         # each method = the base run config + dotted overrides
      - {name: mhp, overrides: {head.name: mhp, head.num_heads: 2}}
      - {name: softmax, overrides: {head.name: softmax}}
      - {name: knn, baseline: knn, options: {k: 10}}   # FAISS kNN on the same dataset, no training
      - {name: plt, baseline: napkinxc, options: {model: PLT}}   # peer libraries (the `peers` extra):
      - {name: xr-linear, baseline: pecos, options: {nr_splits: 16}}  # napkinXC PLT/BR/OVR, PECOS XR-Linear
    reuse: true                      # read a method's finished run back from MLflow instead of training again
Each method trains as run `<name>-<method>`, nested under the compare's own run `<name>` (MLflow's
`mlflow.parentRunId`), which holds the table (markdown, CSV) and the comparison plots as artifacts.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from pathlib import Path

import yaml

from xlc import tracking
from xlc.baselines import peers
from xlc.config import RunConfig, apply_overrides, from_dict, read_yaml
from xlc.data.location import absolute
from xlc.errors import ConfigError
from xlc.plots import plot_time_to_accuracy

COLUMNS = [
    ("p@1", "P@1"), ("p@3", "P@3"), ("p@5", "P@5"), ("ndcg@5", "nDCG@5"), ("psp@5", "PSP@5"),
    ("train_seconds", "train s"), ("samples_per_second", "samples/s"),
    ("peak_memory_bytes", "peak MiB"), ("head_parameters", "head params"),
    ("predict_seconds", "predict s"), ("model_bytes", "model MiB"),
]


BASELINES = ("knn", "napkinxc", "pecos")


def load_compare(path: str | Path, overrides: list[str]) -> tuple[str, str, list[tuple[str, RunConfig, dict | None]], bool]:
    """(name, experiment, [(method, run config, baseline options or None)], reuse) from a compare YAML."""
    path = Path(path)
    raw = read_yaml(path, "compare config")
    if not isinstance(raw, dict) or not isinstance(raw.get("methods"), list) or not raw.get("name"):
        raise ConfigError(f"{path}: expected keys name, base, methods (a list of {{name, overrides}} or {{name, baseline}})")
    if not raw["methods"]:
        raise ConfigError(f"{path}: methods is empty; list at least one {{name, overrides}} or {{name, baseline}}")
    unknown = set(raw) - {"name", "experiment", "base", "methods", "reuse"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: name, experiment, base, methods, reuse")
    base = raw.get("base")
    if isinstance(base, str):
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        try:
            base = read_yaml(base_path, "base run config")
        except ConfigError as e:
            raise ConfigError(f"{path}: base={raw['base']!r}: {e}") from None
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: base must be a run config mapping or a path to one")
    name, experiment = str(raw["name"]), str(raw.get("experiment", raw["name"]))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or ".." in name:
        raise ConfigError(f"{path}: name={name!r}: use letters, digits, '.', '_' and '-' (it names files and runs)")
    methods = []
    for i, m in enumerate(raw["methods"]):
        if not isinstance(m, dict) or "name" not in m:
            raise ConfigError(f"{path}: methods[{i}]: expected a mapping with name and overrides")
        if "baseline" in m:
            if m["baseline"] not in BASELINES:
                raise ConfigError(f"{path}: methods[{i}].baseline={m['baseline']!r}: expected one of {', '.join(BASELINES)}")
            if m["baseline"] in peers.OPTIONS:
                peers.check_options(m["baseline"], m.get("options") or {}, key=f"{path}: methods[{i}].options")
            raw_cfg = apply_overrides(yaml.safe_load(yaml.safe_dump(base)), [f"name={name}-{m['name']}",
                                                                              f"tracking.experiment={experiment}"])
            methods.append((m["name"], from_dict(raw_cfg, overrides), {"baseline": m["baseline"], **(m.get("options") or {})}))
            continue
        items = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                 for k, v in (m.get("overrides") or {}).items()]
        items += [f"name={name}-{m['name']}", f"tracking.experiment={experiment}"]
        raw_cfg = apply_overrides(yaml.safe_load(yaml.safe_dump(base)), items)
        try:
            methods.append((m["name"], from_dict(raw_cfg, overrides), None))
        except ConfigError as e:
            raise ConfigError(f"{path}: method {m['name']!r}: {e}") from None
    return name, experiment, methods, bool(raw.get("reuse", False))


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "peak_memory_bytes":
        return f"{value / 2**20:.0f}"
    if key == "model_bytes":
        return f"{value / 2**20:.1f}"
    if key in ("head_parameters",):
        return f"{int(value):,}"
    if key in ("train_seconds", "samples_per_second", "predict_seconds"):
        return f"{value:.1f}"
    return f"{100 * value:.2f}"


def format_table(runs: list[dict]) -> tuple[str, str]:
    """(markdown, csv) with one row per method; ranking metrics as percentages."""
    header = ["method"] + [title for _, title in COLUMNS]
    rows = [[r["method"]] + [_cell(k, r["metrics"].get(k)) for k, _ in COLUMNS] for r in runs]
    md = "| " + " | ".join(header) + " |\n|" + "|".join("---" for _ in header) + "|\n"
    md += "".join("| " + " | ".join(row) + " |\n" for row in rows)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["method", "run_id"] + [k for k, _ in COLUMNS])
    for r in runs:
        writer.writerow([r["method"], r["run_id"]] + [r["metrics"].get(k, "") for k, _ in COLUMNS])
    return md, buf.getvalue()


def plot(runs: list[dict], out: Path) -> list[Path]:
    """P@k per method (bars) and P@1 against head parameters (log x): the cost/accuracy trade-off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(7, 4))
    ks = [k for k in ("p@1", "p@3", "p@5") if any(k in r["metrics"] for r in runs)]
    width = 0.8 / max(len(runs), 1)
    for i, r in enumerate(runs):
        ax.bar([j + i * width for j in range(len(ks))], [100 * r["metrics"].get(k, 0) for k in ks], width, label=r["method"])
    ax.set_xticks([j + width * (len(runs) - 1) / 2 for j in range(len(ks))], [k.upper() for k in ks])
    ax.set_ylabel("%")
    ax.legend()
    ax.set_title("Ranking metrics per method")
    paths.append(out / "metrics.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        ax.scatter(r["metrics"].get("head_parameters", 0), 100 * r["metrics"].get("p@1", 0), s=40)
        ax.annotate(r["method"], (r["metrics"].get("head_parameters", 0), 100 * r["metrics"].get("p@1", 0)))
    ax.set_xscale("log")
    ax.set_xlabel("head parameters")
    ax.set_ylabel("P@1 (%)")
    ax.set_title("Accuracy against head size")
    paths.append(out / "p1_vs_head_parameters.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def run_baseline(cfg: RunConfig, options: dict, uri: str) -> dict:
    """Fit and score a non-neural baseline on the run's dataset, recorded as an MLflow run like a training run."""
    from xlc.baselines.knn import evaluate_knn

    name = options["baseline"]
    options = {k: v for k, v in options.items() if k != "baseline"}
    extra = {}
    if name in peers.OPTIONS:  # log the options in force (defaults included) and the library's version
        options = peers.check_options(name, options)
        extra = {"library": f"{peers.LIBRARIES[name][1]}=={peers.library_version(name)}"}
    params = tracking.flatten({"baseline": name, "data": absolute(cfg.data), **extra, **options})
    run_id, resumed = tracking.start_run(uri, cfg.tracking.experiment, cfg.name, params, {"head": name},
                                         parent_run_id=cfg.tracking.parent, description=f"{name} baseline on {cfg.data}")
    if not resumed:
        tracking.log_dataset(uri, run_id, cfg.data)
    common = dict(ks=cfg.eval.k, psp_a=cfg.eval.psp_a, psp_b=cfg.eval.psp_b, seed=cfg.train.seed)
    logger = tracking.RunLogger(uri, run_id)
    try:
        with logger.system_metrics():
            if name in peers.OPTIONS:
                metrics = peers.evaluate_peer(name, cfg.data, **common, **options)
            else:
                metrics = evaluate_knn(cfg.data, **common, **options)
    except Exception as e:
        tracking.end_run(uri, run_id, "FAILED")
        if isinstance(e, TypeError):
            raise ConfigError(f"{name} options {sorted(options)}: {e}") from None
        raise
    logger.metrics(metrics, step=0)
    tracking.end_run(uri, run_id)
    return {"run_id": run_id, "metrics": metrics}


def time_to_accuracy(uri: str, runs: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """Per trained method with probes (`eval.every_steps`): (training seconds, probe P@1) over its steps."""
    client = tracking.client(uri)
    probes = {}
    for r in runs:
        history = {key: {m.step: m.value for m in client.get_metric_history(r["run_id"], key)}
                   for key in ("probe/p_at_1", "probe/train_seconds")}
        steps = sorted(set(history["probe/p_at_1"]) & set(history["probe/train_seconds"]))
        if steps:
            probes[r["method"]] = ([history["probe/train_seconds"][s] for s in steps],
                                   [history["probe/p_at_1"][s] for s in steps])
    return probes


def run_compare(path: str | Path, overrides: list[str], out_dir: str | Path = "xlc-runs/compare") -> dict:
    name, experiment, methods, reuse = load_compare(path, overrides)
    uri = None
    plan = []  # (method, cfg, baseline options, tracking uri, finished run to reuse or None)
    for method, cfg, baseline in methods:
        uri = tracking.resolve_uri(cfg.tracking.uri)
        previous = tracking.find_run(uri, experiment, cfg.name) if reuse else None
        plan.append((method, cfg, baseline, uri, previous if previous is not None and previous.info.status == "FINISHED" else None))
    for _, _, baseline, _, previous in plan:  # a missing peer library fails now, not after hours of training
        if previous is None and baseline and baseline["baseline"] in peers.LIBRARIES:
            peers.require(baseline["baseline"])
    # the compare's own run: every method run is nested under it, and it holds the table and the plots
    parent_id, _ = tracking.start_run(uri, experiment, name, {"methods": ",".join(m for m, *_ in methods)},
                                      {"kind": "compare"}, description=f"xlc compare {Path(path).name}: "
                                      f"{len(methods)} methods on {plan[0][1].data}")
    runs = []
    try:
        for method, cfg, baseline, uri, previous in plan:
            if previous is not None:
                tracking.RunLogger(uri, previous.info.run_id).tags({"mlflow.parentRunId": parent_id})
                metrics = {tracking.metric_name(k): v for k, v in previous.data.metrics.items()}
                runs.append({"method": method, "run_id": previous.info.run_id, "metrics": metrics})
                continue
            cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, parent=parent_id))
            if baseline:
                result = run_baseline(cfg, baseline, uri)
            else:
                from xlc.train.trainer import train  # Ray and DeepSpeed: only when a method trains

                result = train(cfg)
            runs.append({"method": method, "run_id": result["run_id"], "metrics": result["metrics"]})
    except BaseException:
        tracking.end_run(uri, parent_id, "FAILED")
        raise

    md, table_csv = format_table(runs)
    out = Path(out_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(md)
    (out / "table.csv").write_text(table_csv)
    figures = plot(runs, out)
    probes = time_to_accuracy(uri, runs)
    if probes:
        figures.append(plot_time_to_accuracy(probes, out / "time_to_accuracy.png"))
    logger = tracking.RunLogger(uri, parent_id)
    for artifact in [out / "table.md", out / "table.csv", *figures]:
        logger.artifact(artifact)
    tracking.end_run(uri, parent_id)
    return {"experiment": experiment, "parent_run_id": parent_id, "runs": runs, "table": md, "out_dir": str(out)}
