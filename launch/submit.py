"""Submit an xlc run to a Ray cluster as a Ray job: `xlc submit CONFIG --address URL [key=value ...]`.

The job runs `python -m xlc.cli train CONFIG key=value ...` in a copy of the working directory (the
repository root, large and private paths excluded), so the run config that works locally works
unchanged on the cluster. Two things must be shared by every node and are therefore passed, not
uploaded: the dataset directory (`data=/shared/...` override; `data/` is never uploaded) and the
MLflow tracking URI (`--tracking-uri`, a server all nodes reach). Checkpoints go to `storage.path`.

`--dry-run` prints the same job as one plain `ray job submit ...` line instead, for Ray's own CLI.

`pip=None` assumes the cluster image already has xlc's dependencies (see cluster_configs/*.yaml);
`pinned_requirements()` gives the runtime dependencies pinned from constraints.txt for a bare image.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
import time
import tomllib
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from xlc.errors import ConfigError, XlcError
from xlc.net import check_answers

if TYPE_CHECKING:
    from xlc.config import RunConfig

# gitignore syntax, relative to the working dir; "/data/" is anchored so xlc/data/ is still uploaded.
WORKING_DIR_EXCLUDES = [
    ".git/",
    ".venv/",
    "/data/",
    "/xlc-runs/",
    "mlruns/",
    "*.parquet",
    "*.db",
    "__pycache__/",
    "*.egg-info/",
    ".pytest_cache/",
    ".hypothesis/",
    "*.pt",
    "*.safetensors",
]

DEFAULT_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PYTHONUNBUFFERED": "1",  # so `ray job logs --follow` shows progress as it happens
    # Ray Train otherwise moves each worker into a per-run directory, and relative paths in the run config
    # (deepspeed: cluster_configs/deepspeed/...json, data: data/...) stop resolving against the uploaded dir.
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
}

DEFAULT_TOKEN_PATH = Path("~/.ray/auth_token")  # where `ray get-auth-token --generate` writes it

# The driver command; `python -m` works whether xlc is pip-installed on the image or only on PYTHONPATH
# (Ray puts the uploaded working dir first on every worker's PYTHONPATH).
ENTRYPOINT = ("python", "-m", "xlc.cli", "train")

class JobFailed(RuntimeError):
    """A job submitted with no_wait=False ended in a state other than SUCCEEDED (not a user error: exit 1)."""


def pinned_requirements(root: str | Path = ".", faiss: str = "gpu") -> list[str]:
    """xlc's runtime dependencies from `root/pyproject.toml` plus its `faiss` extra (`cpu` or `gpu`: one FAISS
    build), each pinned to its `root/constraints.txt` version.

    Ray itself is left out: the cluster already runs Ray, and the client's Ray version must match it.
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    root = Path(root)
    pins: dict[str, str] = {}
    for line in (root / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.strip()
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    if faiss not in ("cpu", "gpu"):
        raise ConfigError(f"--faiss={faiss!r}: expected cpu or gpu")
    out = []
    for spec in project["dependencies"] + project["optional-dependencies"][faiss]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        if name == "ray":
            continue
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        out.append(f"{req.name}{extras}=={pins[name]}" if name in pins else spec)
    return out


def _check_overrides(overrides: Sequence[str]) -> None:
    bad = [o for o in overrides if "=" not in o or not o.partition("=")[0].strip()]
    if bad:
        raise ConfigError(f"overrides {', '.join(map(repr, bad))}: expected key=value, e.g. train.epochs=2")


def _config_in_working_dir(config_path: str | Path, working_dir: Path) -> str:
    """The config path relative to the working dir, as the job (whose cwd is the uploaded dir) sees it."""
    path = Path(config_path).resolve()
    if not path.is_file():
        raise ConfigError(f"config {config_path}: file not found")
    try:
        return path.relative_to(working_dir).as_posix()
    except ValueError:
        raise ConfigError(
            f"config {config_path}: must lie inside the uploaded working dir {working_dir} (working_dir=...)"
        ) from None


def build_job(config_path: str | Path, **options) -> dict:
    """The keyword arguments of `JobSubmissionClient.submit_job`: entrypoint, runtime_env, metadata, submission_id
    (`options`: those of `job_and_config`).

    The run config is loaded here with its overrides, so config errors surface before anything is uploaded.
    """
    return job_and_config(config_path, **options)[0]


def job_and_config(
    config_path: str | Path,
    *,
    overrides: Sequence[str] = (),
    working_dir: str | Path = ".",
    pip: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    tracking_uri: str | None = None,
) -> tuple[dict, RunConfig]:
    """`build_job`'s job, and the run config the job will train (loaded with its overrides and checked)."""
    from xlc.config import load

    working_dir = Path(working_dir).resolve()
    if not working_dir.is_dir():
        raise ConfigError(f"working_dir={str(working_dir)!r}: not a directory")
    overrides = list(overrides)
    _check_overrides(overrides)
    rel_config = _config_in_working_dir(config_path, working_dir)
    if tracking_uri is not None:
        given = [o.partition("=")[2].strip() for o in overrides if o.partition("=")[0].strip() == "tracking.uri"]
        if given and given[-1] != tracking_uri:
            raise ConfigError(f"tracking_uri={tracking_uri!r} conflicts with the override tracking.uri={given[-1]}; give one")
        overrides.append(f"tracking.uri={tracking_uri}")
    cfg = load(working_dir / rel_config, overrides)

    env_vars = dict(DEFAULT_ENV)
    if cfg.tracking.uri:
        env_vars["MLFLOW_TRACKING_URI"] = cfg.tracking.uri
    env_vars.update(env or {})
    runtime_env: dict = {"working_dir": str(working_dir), "excludes": list(WORKING_DIR_EXCLUDES), "env_vars": env_vars}
    if pip is not None:
        runtime_env["pip"] = {"packages": list(pip), "pip_check": False}
    return {
        "entrypoint": shlex.join([*ENTRYPOINT, rel_config, *overrides]),
        "runtime_env": runtime_env,
        "metadata": {"xlc_run": cfg.name, "xlc_config": rel_config},
        "submission_id": f"xlc-{cfg.name}-{uuid.uuid4().hex[:8]}",
    }, cfg


def ray_job_submit_line(job: dict, address: str, working_dir: str | Path = ".") -> str:
    """`job` (from `build_job`) as one plain `ray job submit` command line, shell-quoted, to run with Ray's own CLI
    from where `working_dir` (as given) is the directory to upload. Ray's CLI re-joins the words after `--` with
    shlex, so the job's entrypoint arrives exactly as `build_job` wrote it."""
    runtime_env = {k: v for k, v in job["runtime_env"].items() if k != "working_dir"}  # travels as --working-dir
    argv = ["ray", "job", "submit", "--address", address, "--working-dir", str(working_dir),
            "--runtime-env-json", json.dumps(runtime_env, separators=(",", ":")), "--"]
    return f"{shlex.join(argv)} {job['entrypoint']}"


def _warn_if_untracked(job: dict) -> None:
    if "MLFLOW_TRACKING_URI" not in job["runtime_env"]["env_vars"]:
        print(
            "warning: tracking.uri is null, so the MLflow run is written inside the job's temporary working dir "
            "on the cluster; pass --tracking-uri with a server every node reaches",
            file=sys.stderr,
        )


def auth_headers() -> dict[str, str]:
    """`Authorization: Bearer TOKEN` with the Ray auth token from where Ray's token-auth guide keeps it
    ($RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token), or {} when there is none or
    RAY_AUTH_MODE=disabled. A cluster started with a token requires it; Ray's own client sends it only when
    RAY_AUTH_MODE=token is set in the submitting shell."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        given = os.environ.get("RAY_AUTH_TOKEN_PATH")
        path = Path(given or DEFAULT_TOKEN_PATH).expanduser()
        if given and not path.is_file():  # Ray aborts here too, never falls back
            raise ConfigError(f"RAY_AUTH_TOKEN_PATH={str(path)!r}: no such file; point it at the cluster's auth token")
        token = path.read_text().strip() if path.is_file() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def job_client(address: str):
    """A `JobSubmissionClient` for the dashboard at `address`, sending the Ray auth token when there is one."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address, headers=auth_headers())


def state_client(address: str):
    """A Ray state API client (`StateApiClient`) for the dashboard at `address`, sending the Ray auth token."""
    from ray.util.state import StateApiClient

    return StateApiClient(address, headers=auth_headers())


def alive_nodes(address: str) -> list:
    """The alive nodes (Ray's `NodeState` records) of the Ray cluster whose dashboard is at `address`."""
    from ray.util.state.common import ListApiOptions, StateResource

    return state_client(address).list(StateResource.NODES, ListApiOptions(filters=[("state", "=", "ALIVE")]),
                                      raise_on_missing_output=False)


def follow(address: str, job_id: str, *, out=sys.stdout) -> str:
    """Stream the job's logs until it ends; return its final status (SUCCEEDED, FAILED or STOPPED)."""
    client = job_client(address)

    async def _tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            out.write(lines)
            out.flush()

    asyncio.run(_tail())
    return str(client.get_job_status(job_id).value)


def submit(
    config_path: str | Path,
    address: str,
    *,
    overrides: Sequence[str] = (),
    working_dir: str | Path = ".",
    pip: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    tracking_uri: str | None = None,
    no_wait: bool = True,
) -> str:
    """Submit `xlc train CONFIG overrides...` to the Ray cluster at `address` (its dashboard URL); return the job id.

    With `no_wait=False`, stream the job's logs and raise `JobFailed` unless it ends SUCCEEDED.
    """
    job, cfg = job_and_config(config_path, overrides=overrides, working_dir=working_dir, pip=pip, env=env,
                              tracking_uri=tracking_uri)
    check_answers(address, "--address", "the Ray dashboard URL, e.g. http://HEAD:8265")
    from xlc.train.driver import check_shared_storage

    check_shared_storage(cfg, len(alive_nodes(address)))  # as the job's driver would, before anything is uploaded
    _warn_if_untracked(job)
    job_id = submit_when_an_agent_answers(job_client(address), job)
    print(f"submitted job {job_id}: {job['entrypoint']}")
    print(f"follow its logs: ray job logs --follow --address {shlex.quote(address)} {job_id}")
    print(f"status / stop:   ray job status --address {shlex.quote(address)} {job_id}  |  ray job stop ...")
    if not no_wait:
        status = follow(address, job_id)
        if status != "SUCCEEDED":
            raise JobFailed(f"job {job_id} ended {status}; see: ray job logs --address {address} {job_id}")
    return job_id


AGENT_WAIT_S = 180  # a fresh cluster's job agents may take a minute or more to answer: "try again later"


def submit_when_an_agent_answers(client, job: dict) -> str:
    """`client.submit_job(**job)`, retried for up to `AGENT_WAIT_S` while Ray answers that no job agent is
    available yet (the head's dashboard is up before the nodes' agents register)."""
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as e:
            if "No available agent to submit job" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def _parse_env(items: Sequence[str]) -> dict[str, str]:
    bad = [i for i in items if "=" not in i or not i.partition("=")[0]]
    if bad:
        raise ConfigError(f"--env {', '.join(map(repr, bad))}: expected NAME=VALUE")
    return dict(i.split("=", 1) for i in items)


def submit_command(
    config: Annotated[Path, typer.Argument(help="run config YAML, inside the working dir")],
    address: Annotated[str, typer.Option(help="Ray dashboard URL, e.g. http://HEAD:8265", envvar="RAY_ADDRESS")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="dotted overrides, e.g. train.epochs=2")] = None,
    working_dir: Annotated[Path, typer.Option(help="directory uploaded as the job's working dir")] = Path("."),
    install_deps: Annotated[
        bool, typer.Option(help="pip-install xlc's runtime deps pinned from constraints.txt (for images without them)")
    ] = False,
    faiss: Annotated[str, typer.Option(help="with --install-deps: the FAISS build, cpu or gpu")] = "gpu",
    env: Annotated[Optional[list[str]], typer.Option(help="extra NAME=VALUE environment variable; repeatable")] = None,
    tracking_uri: Annotated[Optional[str], typer.Option(help="MLflow tracking URI every node reaches")] = None,
    wait: Annotated[bool, typer.Option(help="stream the job's logs and exit non-zero unless it succeeds")] = False,
    dry_run: Annotated[
        bool, typer.Option(help="print the equivalent plain `ray job submit` command line and submit nothing")
    ] = False,
) -> None:
    """Submit `xlc train CONFIG key=value...` to a Ray cluster as a Ray job and print the job id."""
    pip = pinned_requirements(working_dir, faiss) if install_deps else None
    if dry_run:  # the cluster is not contacted: the config is checked and the command printed
        job = build_job(config, overrides=overrides or (), working_dir=working_dir, pip=pip,
                        env=_parse_env(env or ()), tracking_uri=tracking_uri)
        _warn_if_untracked(job)
        print(ray_job_submit_line(job, address, working_dir))
        return
    try:
        submit(
            config,
            address,
            overrides=overrides or (),
            working_dir=working_dir,
            pip=pip,
            env=_parse_env(env or ()),
            tracking_uri=tracking_uri,
            no_wait=not wait,
        )
    except JobFailed as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(1) from None


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m launch.submit CONFIG --address URL [key=value ...]`; exit 2 on bad input, 1 if a waited job fails."""
    app = typer.Typer(add_completion=False)
    app.command()(submit_command)
    args = list(argv if argv is not None else sys.argv[1:])
    try:
        typer.main.get_command(app).main(args=args, prog_name="xlc submit")  # standalone: always exits
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 0
    except XlcError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
