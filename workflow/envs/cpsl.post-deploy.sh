#!/usr/bin/env bash
# Run by Snakemake once, inside the freshly created conda environment, from the project root.
set -euo pipefail
bash workflow/setup.sh
