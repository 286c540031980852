# Shared helpers for the rules: paths (from cpsl.paths), the per-stage params slices and code files. `config` is
# params.yaml as cpsl itself reads it, plus the --config switches as booleans (cpsl.workflow_config, in the Snakefile).
import json

from cpsl import deps, paths, rows, run_folder
from cpsl.config import stage_slice

DATASET = config["dataset"]
ABLATIONS = config["ablations"]
SEEDS = config["train"]["seeds"]


def code(stage):
    """The package files the stage runs (cpsl.deps, from this repository's src/cpsl): one input per file,
    so an edit reruns exactly the stages that import it (a folder's mtime does not change on such an edit)."""
    return deps.stage_files(stage, root=workflow.basedir)


def params_slice(stage, row=None):
    """The stage's params as one JSON string: Snakemake reruns the rule when it changes. With ``row``, only the
    params that row's runs read (cpsl.rows.run_params): an edit of a baseline's section reruns that baseline only."""
    source = rows.run_params(config, row) if row is not None else config
    return json.dumps(stage_slice(source, stage, missing_ok=row is not None), sort_keys=True)


# the run folders' row wildcard: every row ID (Table 2 IDs, T0, the Table 1 baselines)
ROW_PATTERN = rows.snakemake_pattern()


def run_dir(ablation, seed):
    return str(paths.run_dir(DATASET, ablation, seed))


GRID, TABLE1 = config["grid"], config["table1"]  # the --config workflow switches (cpsl.workflow_config)


def grid_ablations():
    """The rows to train, each once: the configured `ablations`; `--config grid=true` adds the whole Table 2
    grid, `--config table1=true` T0, A6 and every Table 1 baseline. Duplicate paper rows map to one run (B1 -> A1)."""
    return rows.trained_rows(ABLATIONS, GRID, TABLE1)


def declared_outputs():
    """Every output a job of this run declares, up to the evaluate stage (the report's are report_outputs())."""
    cache = paths.processed_path(DATASET)
    runs = [f"{run_dir(a, s)}/{name}" for a in grid_ablations() for s in SEEDS
            for name in run_folder.TRAIN_OUTPUTS + run_folder.EVALUATE_OUTPUTS]
    return [str(paths.raw_dir(DATASET)), str(cache), str(cache.with_suffix(".report.json"))] + runs


def report_outputs():
    folder = paths.reports_dir(DATASET)
    return [str(paths.summary_path(DATASET))] + [str(folder / name) for name in paths.REPORT_FILES]
