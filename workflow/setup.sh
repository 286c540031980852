#!/usr/bin/env bash
# Install the project and its workflow/test tools into the current Python environment.
# torch is pinned and installed FIRST: the CPU wheel lies on disk here, and any unpinned torch
# requirement resolved before it would pull a multi-GB CUDA build. On a GPU machine, install the
# CUDA torch of your choice first and set CPSL_SKIP_TORCH=1.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${CPSL_SKIP_TORCH:-0}" != "1" ]; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[workflow,test]"
