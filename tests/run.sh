#!/usr/bin/env bash
# Set up ./.venv (launch/setup_env.sh) and run the default test suite: unit, gloo multi-process and
# integration (Ray, MLflow, CLI) tests, on one pytest-xdist worker per core: the integration tests share one
# worker (and one Ray head), the unit and gloo tests spread over the others (tests/conftest.py).
# Extra arguments go to pytest, e.g. `bash tests/run.sh -m "not integration"` or `-n 0` for one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup_env.sh
export RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
exec .venv/bin/python -m pytest -m "not slow and not needs_packages and not manual" -q -n auto --maxprocesses 8 --dist loadgroup "$@"
