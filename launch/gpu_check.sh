#!/usr/bin/env bash
# One prepared GPU check (xlc/bench/gpu_check.py): xlc's heads and the fused linear-cross-entropy peers at
# 10^6-10^7 labels in bf16, plus `xlc train --local` under ZeRO 0-3 where it exists; one markdown report,
# $OUT/gpu_check.md when $OUT is set, else ./gpu_check.md. Under 8 minutes on one H100/H200.
#   bash launch/gpu_wheels.sh                # once, on a machine with pip: fills .whl/ (git-ignored)
#   bash launch/gpu_check.sh [--cpu] [--zero-stages 0,1,2,3]
# --cpu: tiny float32 sizes on the CPU, the same code path and report (CI). PYTHON: interpreter (python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The carried wheels are cp312 builds for the GPU machine's image; the CPU mode uses what is installed.
if [[ " $* " != *" --cpu "* ]] && compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
report="${OUT:-.}/gpu_check.md"
"$PYTHON" -m xlc.bench.gpu_check --out "$report" "$@"
echo "report: $report"
