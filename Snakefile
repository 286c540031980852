# Thin Snakemake front end: every rule calls one `cpsl` subcommand; all logic lives in src/cpsl.
# params.yaml is the single source of truth (cpsl reads and validates it itself); each rule declares
# only its own slice of it (cpsl.config.schema.STAGE_PARAMS) so a change reruns only the stages that use it.
# tests/test_workflow_parity.py keeps this and dvc.yaml in step.
#
#   snakemake --cores 4                       the configured ablations (A6, T0) x train.seeds, then the report
#   snakemake --cores 4 --config grid=true    the whole Table 2 grid (A0-C5, duplicates once) + T0 x train.seeds
#   snakemake --cores 4 --config table1=true  Table 1: T0, A6 and every baseline (MAG, ...) x train.seeds

import sys

from cpsl.runtime.engine_guard import ProjectBusy, hold_for_snakemake
from cpsl.config.env_vars import check_environment
from cpsl.config.workflow_config import workflow_config

# No `configfile:` directive: Snakemake's own YAML loader would read params.yaml before cpsl could check it. config
# holds the --config values here; cpsl reads and validates the file (the stages' loader: nesting bounded, duplicate
# keys refused) and checks --config (only the switches grid, table1: true or false) before any job.
config.update(workflow_config(config, "params.yaml"))
check_environment()  # ... or an invalid CPSL_* variable
if workflow.is_main_process:
    # one workflow run per project: a second one (a dry run too) fails here naming the first's PID
    # (cpsl.runtime.engine_guard), in one line rather than Snakemake's traceback of the Snakefile
    try:
        hold_for_snakemake()
    except ProjectBusy as exc:
        sys.exit(f"snakemake: error: {exc}")

# `snakemake --report report.html`: Tables 1-2, Figures 2-3, each run's metrics and the job benchmarks, captioned
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


# Every declared output, not only the report's: Snakemake reruns a job for a missing output only when a job that
# must run needs it, so a metrics.json deleted by a failed evaluate would stay missing, and `snakemake -n` say
# "Nothing to be done", while the report's own outputs look up to date (docs/DESIGN.md, "Reruns").
rule all:
    input:
        report_outputs(),
        declared_outputs(),
        benchmarks_table(),
