#!/usr/bin/env bash
# Set up ./.venv (launch/setup_env.sh) and run the default test suite: unit, gloo multi-process and
# integration (Ray, MLflow, CLI) tests, spread over one pytest-xdist worker per core (each worker starts at most
# one Ray head and builds each session dataset once, when its first test needs them).
# Extra arguments go to pytest, e.g. `bash tests/run.sh -m "not integration"` or `-n 0` for one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup_env.sh
export RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
exec .venv/bin/python -m pytest -m "not slow and not needs_packages" -q -n auto --maxprocesses 8 --dist load "$@"
