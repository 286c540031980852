#!/usr/bin/env bash
# One command on a fresh machine: set up, then run the whole pipeline on the embedded demo dataset
# (offline, CPU): prepare -> align -> train (every seed) -> evaluate -> report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash workflow/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
snakemake --cores "${CORES:-2}" "$@"
echo "Done: see reports/demo/ (tables, figures, summary.json, results.json, benchmarks.md); each job's log is in logs/demo/; snakemake --report report.html for one browsable page"
