"""xlc.data stays free of Ray, DeepSpeed, MLflow and xlc.train (it runs inside workers and tools alike)."""

import subprocess
import sys


def test_xlc_data_imports_no_heavy_frameworks():
    code = ("import sys, xlc.data, xlc.data.stats; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'deepspeed', 'mlflow') "
            "or m.startswith('xlc.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
