#!/usr/bin/env bash
# Create ./.venv and install xlc with every dependency pinned by constraints.txt (torch==2.13.0 CPU wheel).
# Idempotent: a second run only checks the pins. DS_BUILD_OPS=0: DeepSpeed without compiled ops.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
export DS_BUILD_OPS=0 PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install -q -c constraints.txt torch==2.13.0
.venv/bin/python -m pip install -q -c constraints.txt -e ".[cpu,dev,text]"
# the peers extra (napkinxc, libpecos): --no-deps because libpecos declares numpy<2 and scipy<1.14, which
# cannot resolve against constraints.txt; its XR-Linear runs on the pinned versions (xlc/baselines/_pecos_compat.py)
.venv/bin/python -m pip install -q -c constraints.txt --no-deps napkinxc libpecos
