#!/usr/bin/env bash
# Download into .whl/ (git-ignored) the wheels `launch/gpu_check.sh` installs on the GPU machine, whose image
# has Python 3.12 + torch + triton but no deepspeed, pydantic or fused-kernel peers (docs/benchmarks.md, "GPU check").
#   bash launch/gpu_wheels.sh            # PYTHON=/path/to/python to use another interpreter; it must import torch
# DeepSpeed ships only an sdist: it is built here as a pure-Python wheel without compiled ops (DS_BUILD_OPS=0),
# which needs torch importable at build time (--no-build-isolation). Everything else is a cp312 manylinux
# (or pure-Python) binary; typing-extensions because typing-inspection needs >= 4.15, newer than some images
# hold. The total must stay well under the 64 MiB that travels to the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export PIP_DISABLE_PIP_VERSION_CHECK=1
mkdir -p .whl

if ! ls .whl/deepspeed-0.19.8-*.whl >/dev/null 2>&1; then
  DS_BUILD_OPS=0 "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w .whl deepspeed==0.19.8
fi

# --python-version/--platform describe the GPU machine, not this one; pip matches each manylinux tag exactly.
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d .whl \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  hjson py-cpuinfo pydantic==2.12.5 pydantic-core==2.41.5 annotated-types typing-inspection typing-extensions \
  cut_cross_entropy==25.1.1 liger_kernel==0.8.5

ls -l .whl/*.whl
echo "total: $(du -cb .whl/*.whl | tail -1 | cut -f1) bytes in $(ls .whl/*.whl | wc -l) wheels (limit 64 MiB = 67108864 with the tree)"
