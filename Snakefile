# Thin Snakemake front end: every rule calls one `cpsl` subcommand; all logic lives in src/cpsl.
# params.yaml is the single source of truth (cpsl reads and validates it itself); each rule declares
# only its own slice of it (cpsl.config.STAGE_PARAMS) so a change reruns only the stages that use it.
# Edit params.yaml rather than passing --config: the stages read the file, not Snakemake's config.
# tests/test_workflow_parity.py keeps this and dvc.yaml in step.

from cpsl.config import load_params

configfile: "params.yaml"
config = load_params("params.yaml")  # fail before any job on an invalid params file

include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        report_outputs(),
