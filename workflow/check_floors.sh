#!/usr/bin/env bash
# CI (called by .ci/run): the dependency floors in pyproject.toml are true. A venv on top of the installed
# environment (--system-site-packages: torch and everything else are reused) gets the FLOOR release of transformers
# (the `transformers>=X` of pyproject.toml, with whatever tokenizers / huggingface-hub pip picks for it), then a
# focused subset of the tests runs in it: the text encoder (load, relative-position cache), the tokenizers incl.
# DeBERTa-v2's built from a sentencepiece model, training steps in every execution.step mode, fit, evaluate.
# A skipped test fails the check (a skip would hide a floor that does not work). About 1-2 minutes; .ci/run runs it
# beside the test suite.
# torch is NOT lowered here: only the installed torch (2.13.0, CPU) can be installed on this machine; its floor in
# pyproject.toml is read off the APIs the code calls (see the comment there).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
venv=.venv-floor
floor=$(sed -n 's/^ *"transformers>=\([0-9][0-9.]*\)".*/\1/p' pyproject.toml)
[ -n "$floor" ] || { echo "check_floors: no transformers>=X in pyproject.toml" >&2; exit 1; }
[ -x "$venv/bin/python" ] || "$PY" -m venv --system-site-packages "$venv"
log=$(mktemp)
# pip's notes about packages of the outer environment that want a newer transformers are expected: not shown.
# [hub-kernels]: the floor's own pin of `kernels` goes into the venv. Newer transformers require `kernels` (0.19 in
# the outer environment), whose LayerRepository the floor's transformers/integrations/hub_kernels.py calls at import
# time with arguments 0.19 refuses ("Either a revision or a version must be specified"): every model import failed.
"$venv/bin/python" -m pip install -q "transformers[hub-kernels]==$floor" > "$log" 2>&1 || { cat "$log"; exit 1; }
"$venv/bin/python" -c "import transformers, torch
from packaging.version import Version
assert Version(transformers.__version__) == Version('$floor'), transformers.__version__
print(f'check_floors: transformers {transformers.__version__} (the floor), torch {torch.__version__}')"
export PYTHONPATH="$PWD/src" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1
status=0
# its own --basetemp: .ci/run runs this beside the main test suite, whose tmp folders it must not touch
"$venv/bin/python" -m pytest -q -p no:cacheprovider -rs --basetemp "$venv/pytest-tmp" \
    tests/test_network.py tests/test_subwords.py tests/test_evaluate_stage.py \
    "tests/test_step_modes.py::test_eager_and_sync_free_steps_give_identical_numbers" \
    "tests/test_step_modes.py::test_fit_gives_the_same_run_in_both_modes" \
    "tests/test_step_modes.py::test_grad_clip_clips_what_the_optimizer_applies" \
    "tests/test_cuda_graph_logic.py::test_graphed_run_equals_the_eager_run" 2>&1 | tee "$log" || status=$?
if [ "$status" != 0 ]; then exit "$status"; fi
if grep -q "skipped" "$log"; then
    echo "check_floors: a test was skipped at the floor (see the SKIPPED line above): the floor does not work" >&2
    rm -f "$log"
    exit 1
fi
rm -f "$log"
