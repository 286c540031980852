# Thin Snakemake front end: every rule calls one `cpsl` subcommand; all logic lives in src/cpsl.
# params.yaml is the single source of truth (cpsl reads and validates it itself); each rule declares
# only its own slice of it (cpsl.config.STAGE_PARAMS) so a change reruns only the stages that use it.
# tests/test_workflow_parity.py keeps this and dvc.yaml in step.
#
#   snakemake --cores 4                       the configured ablations (A6, T0) x train.seeds, then the report
#   snakemake --cores 4 --config grid=true    the whole Table 2 grid (A0-C5, duplicates once) + T0 x train.seeds
#   snakemake --cores 4 --config table1=true  Table 1: T0, A6 and every baseline (MAG, ...) x train.seeds

from snakemake.common.configfile import load_configfile

from cpsl.config import load_params
import sys

from cpsl.engine_guard import ProjectBusy, hold_for_snakemake
from cpsl.env_vars import check_environment

configfile: "params.yaml"

WORKFLOW_KEYS = {"grid", "table1"}  # the only --config keys: workflow switches that are not params
load_params("params.yaml")  # fail before any job on an invalid params file
check_environment()  # ... or an invalid CPSL_* variable
if workflow.is_main_process:
    # one workflow run per project: a second one (a dry run too) fails here naming the first's PID
    # (cpsl.engine_guard), in one line rather than Snakemake's traceback of the Snakefile
    try:
        hold_for_snakemake()
    except ProjectBusy as exc:
        sys.exit(f"snakemake: error: {exc}")
# config = params.yaml as Snakemake reads it, plus --config: compare with the file read the same way
_file = load_configfile("params.yaml")
_overridden = sorted(k for k in config if k not in WORKFLOW_KEYS and config.get(k) != _file.get(k))
if _overridden:
    raise ValueError(
        f"--config may only set {sorted(WORKFLOW_KEYS)}; {_overridden} are params: edit params.yaml "
        "(the stages read that file, so a --config value would not reach them)"
    )

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
