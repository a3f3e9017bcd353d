"""`xlc` commands. User errors (`XlcError`) become one line per problem on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from pathlib import Path
from types import SimpleNamespace
from typing import List, Optional

import typer

from xlc import progress
from xlc.errors import ConfigError, DataError, Interrupted, XlcError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train and compare extreme-label classifier heads.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks of the hot paths (results in docs/benchmarks.md).")
app.add_typer(bench_app, name="bench")

OVERRIDES = typer.Argument(None, help="Dotted overrides, e.g. head.name=softmax train.epochs=2")


def _stop_local_ray() -> None:
    """Stop the Ray this process started, so no worker log line lands after our own output."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


@contextmanager
def _interrupts() -> Iterator[SimpleNamespace]:
    """Inside the block SIGTERM raises `KeyboardInterrupt` as Ctrl-C does, so a run stopped either way ends the
    same way; the yielded `.signum` says which signal it was (Ray re-raises either as a plain KeyboardInterrupt)."""
    received = SimpleNamespace(signum=signal.SIGINT)

    def on_sigterm(signum, frame) -> None:
        received.signum = signum
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)  # main thread only, as every signal handler
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_result(result: dict, as_json: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    run_id = result["run_id"] or "none (tracking off)"
    table = Table(title=f"run {run_id}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in sorted(result["metrics"].items()):
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console(stderr=as_json).print(table)
    print(f"run_id: {run_id}", file=sys.stderr if as_json else sys.stdout)
    if as_json:
        print(json.dumps(result))


@app.command()
def train(
    config: str = typer.Argument(..., help="Run config YAML"),
    overrides: Optional[List[str]] = OVERRIDES,
    as_json: bool = typer.Option(False, "--json", help="End standard output with one JSON object"),
    local: bool = typer.Option(False, "--local", help="No Ray: this process (or each torchrun rank) trains"),
    restart: bool = typer.Option(False, "--restart", help="Start from step 0: delete the run's checkpoints and "
                                 "open a new MLflow run of the same name"),
) -> None:
    """Train one run (resumes a run of the same name); print its MLflow run id and final metrics. Ctrl-C or
    SIGTERM ends the MLflow run as KILLED and says which step the same command resumes from."""
    from xlc.config import load
    from xlc.train.driver import resume_hint

    if as_json:  # stdout is the result's; step lines stay on stderr, progress bars off
        progress.quiet()

    cfg = load(config, overrides or [])
    with _interrupts() as interrupt:
        try:
            # Under torchrun, --local is implied: its own parser rejects a `--local` after the script as an
            # ambiguous prefix of its options (`torchrun ... -m xlc.cli -- train CONFIG --local` passes it through).
            if local or "TORCHELASTIC_RUN_ID" in os.environ:  # no Ray; ranks other than 0 return None, print nothing
                from xlc.train.local import train as train_local

                result = train_local(cfg, restart)
            else:
                from xlc.train.trainer import train as train_ray

                try:
                    result = train_ray(cfg, restart)
                finally:
                    _stop_local_ray()
        except KeyboardInterrupt:
            raise Interrupted(resume_hint(cfg), interrupt.signum) from None
    if result is not None:
        _print_result({"run_id": result["run_id"], "metrics": result["metrics"]}, as_json)


@app.command("eval")
def evaluate(
    ref: str = typer.Argument(..., help="An MLflow run id or a checkpoint directory"),
    data: Optional[str] = typer.Option(None, help="Dataset directory or pyarrow.fs URI such as s3://bucket/prefix "
                                                  "(default: the run's own)"),
    uri: Optional[str] = typer.Option(None, help="Tracking URI (default: the local store under ./xlc-runs/)"),
    retrieval: Optional[str] = typer.Option(
        None, help="Open set instead: a dataset of classes the run never saw; its train split is the gallery, its "
                   "test split the probes (top-1/top-5 identification by nearest identity template, FAISS)"),
    as_json: bool = typer.Option(False, "--json", help="End standard output with one JSON object"),
) -> None:
    """Score a trained run's latest valid checkpoint on a dataset's test split, in this process."""
    from xlc.net import check_answers, is_http

    if as_json:
        progress.quiet()

    if uri and is_http(uri) and not Path(ref).is_dir():  # MLflow would retry a dead server for minutes
        check_answers(uri, "--uri", "a running MLflow tracking server, or no --uri for the local store")
    from xlc.train.offline import checkpoint_of, evaluate_checkpoint

    with checkpoint_of(ref, uri) as directory:
        if data is not None:
            _check_same_shape(directory, data)
        metrics = _open_set(directory, retrieval) if retrieval else evaluate_checkpoint(directory, data)
    _print_result({"run_id": ref, "checkpoint": str(directory), "metrics": metrics}, as_json)


def _open_set(directory: Path, data: str) -> dict:
    """Open-set identification on `data` with the features of the checkpoint's backbone (`xlc eval --retrieval`)."""
    from xlc.baselines.retrieval import identification
    from xlc.train.offline import embed_split, load_checkpoint

    model, _, cfg, _ = load_checkpoint(directory)  # sized by the run's own dataset; `data` only feeds the backbone
    gallery, gallery_labels = embed_split(model, data, "train", cfg.train.batch_size)
    probes, probe_labels = embed_split(model, data, "test", cfg.train.batch_size)
    return identification(gallery, gallery_labels, probes, probe_labels)


def _check_same_shape(checkpoint: Path, data: str) -> None:
    """`--data` must have the labels and features of the run's own dataset, which sized its head and backbone."""
    from xlc.data import read_meta
    from xlc.train.checkpoint import read_state

    own = read_state(checkpoint)["config"]["data"]
    try:
        trained = read_meta(own)
    except XlcError:  # moved, deleted or out of reach: nothing to compare with; loading the weights will tell
        return

    def shape(meta) -> str:
        return (f"{meta.num_labels} labels, {meta.num_features or 'no sparse'} features" + (", text" if meta.text else "")
                + (f", {meta.image} images" if meta.image else ""))

    given = read_meta(data)
    if shape(given) != shape(trained):
        raise DataError(f"--data {data}: {shape(given)}, but run was trained on {own} with {shape(trained)}; "
                        "evaluate on a dataset with the same labels and features")


@app.command()
def compare(
    config: str = typer.Argument(..., help="Compare config YAML (cluster_configs/examples/compare-*.yaml)"),
    overrides: Optional[List[str]] = OVERRIDES,
    as_json: bool = typer.Option(False, "--json", help="End standard output with one JSON object"),
    out_dir: str = typer.Option("xlc-runs/compare", help="Where the markdown/CSV table and plots are written"),
) -> None:
    """Run several heads/baselines on one dataset and print one side-by-side table."""
    from xlc.compare import run_compare

    if as_json:
        progress.quiet()

    summary = run_compare(config, overrides or [], out_dir=out_dir)
    _stop_local_ray()
    print(summary["table"])
    if as_json:
        print(json.dumps({"experiment": summary["experiment"], "parent_run_id": summary["parent_run_id"],
                          "runs": summary["runs"]}))


@app.command()
def repro(
    name: str = typer.Argument(..., help="theorem3 | collapse | decomposition | rank | substructure"),
    size: str = typer.Option("default", help="tiny (seconds, for tests) or default (minutes on 2 CPU cores)"),
    seed: int = typer.Option(0, help="Seed of the data, the initialisation and the batch order"),
    uri: Optional[str] = typer.Option(None, help="Tracking URI (default: the local store under ./xlc-runs/)"),
    data_cache: str = typer.Option("xlc-runs/repro-data", help="Where the datasets it builds are kept"),
    threads: int = typer.Option(1, help="torch threads (the matrices are small: more threads mostly spin)"),
    as_json: bool = typer.Option(False, "--json", help="End standard output with one JSON object"),
) -> None:
    """Re-run one of the seed papers' experiments on CPU; log its table and figures to MLflow `repro-NAME`."""
    from rich.console import Console
    from rich.table import Table

    from xlc.repro import run as run_repro

    if as_json:
        progress.quiet()
    run_id, report = run_repro(name, size, seed, uri, Path(data_cache), threads)
    table = Table(title=f"repro {name} ({size}, seed {seed}): run {run_id}", caption=report.claim)
    for column in report.columns:
        table.add_column(column, justify="left" if column == report.columns[0] else "right")
    for row in report.rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in (row.get(c, "") for c in report.columns)))
    Console(stderr=as_json).print(table)
    if as_json:
        print(json.dumps({"run_id": run_id, "experiment": f"repro-{name}", **report.to_dict()}))


@app.command()
def ui(
    port: int = typer.Option(5000, help="Port on 127.0.0.1"),
    uri: Optional[str] = typer.Option(None, help="Tracking URI (default: the local store under ./xlc-runs/)"),
    host: str = typer.Option("127.0.0.1", help="Bind address; keep 127.0.0.1 unless you mean to expose it"),
) -> None:
    """Serve the MLflow UI for the local store on 127.0.0.1."""
    _check_port_free(host, port)  # the server would log the failure and still exit 0
    from xlc import tracking

    store = tracking.resolve_uri(uri)
    artifacts = str((tracking.RUNS_DIR / "artifacts").resolve())
    os.execvp(
        sys.executable,
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
         "--default-artifact-root", artifacts, "--host", host, "--port", str(port)],
    )


def _check_port_free(host: str, port: int) -> None:
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port}: expected a port number in 1..65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no conflict
            probe.bind(address)
    except OSError as e:  # in use, not an address of this machine, unknown host
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e}); "
                              "pick a free port with --port") from None


@bench_app.command("heads", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench_heads(ctx: typer.Context) -> None:
    """Train-step time, peak memory and top-k time per head and label count (see --help of the bench)."""
    from xlc.bench.heads import main as bench_main

    bench_main(list(ctx.args))


@bench_app.command("sharded", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench_sharded(ctx: typer.Context) -> None:
    """Model-parallel heads on 1..N gloo ranks: step time, memory per rank, bytes communicated."""
    from xlc.bench.sharded import main as bench_main

    bench_main(list(ctx.args))


@bench_app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench_train(ctx: typer.Context) -> None:
    """The training step on gloo ranks: samples/s and time per phase (forward, head, backward, all-reduce, optimiser)."""
    from xlc.bench.train import main as bench_main

    bench_main(list(ctx.args))


@bench_app.command("ann", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench_ann(ctx: typer.Context) -> None:
    """FAISS ANN top-k over a trained classifier: recall@k against exact top-k, P@k both ways, speedup."""
    from xlc.bench.ann import main as bench_main

    bench_main(list(ctx.args))


@bench_app.command("gpu-check", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench_gpu_check(ctx: typer.Context) -> None:
    """Heads and fused linear-CE peers at 10^6-10^7 labels on one GPU, one markdown report (--cpu: tiny CI mode)."""
    from xlc.bench.gpu_check import main as bench_main

    bench_main(list(ctx.args))


def _register_plugins() -> None:
    """Commands of the sibling packages, declared as entry points in pyproject.toml (`xlc.commands`: `data`
    from data_tools, `submit` from launch; `xlc.bench`: `data`), so that xlc itself imports neither of them
    and every import arrow between the packages points into xlc."""
    for ep in entry_points(group="xlc.commands"):
        command = ep.load()
        if isinstance(command, typer.Typer):
            app.add_typer(command, name=ep.name)
        else:
            app.command(ep.name)(command)
    for ep in entry_points(group="xlc.bench"):
        main = ep.load()

        def run(ctx: typer.Context, main=main) -> None:
            main(list(ctx.args))

        run.__doc__ = (sys.modules[main.__module__].__doc__ or "").strip().split("\n")[0]
        bench_app.command(ep.name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(run)


_register_plugins()


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        app(args=argv, standalone_mode=False)
    except XlcError as e:
        for line in str(e).splitlines():  # one line per problem (a config reports every field at once)
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as e:
        print(e, file=sys.stderr)
        sys.exit(128 + e.signum)
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        sys.exit(code or 0)
    except Exception as e:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(2)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
