# Shared helpers for the rules: paths (from cpsl.config.paths), the per-stage params slices and code files. `config` is
# params.yaml as cpsl itself reads it, plus the --config switches as booleans (cpsl.config.workflow_config, in the Snakefile).
import json
from pathlib import Path

from cpsl.runtime import deps
from cpsl.config import paths, rows
from cpsl.formats import run_folder
from cpsl.config.schema import stage_slice

DATASET = config["dataset"]
ABLATIONS = config["ablations"]
SEEDS = config["train"]["seeds"]


def code(stage, row=None):
    """The package files a job of the stage runs (cpsl.runtime.deps, from this repository's src/cpsl): one input per file,
    so an edit reruns exactly the jobs that import it (a folder's mtime does not change on such an edit). With
    ``row`` (train, evaluate): the stage's kit plus that row's own code, so an edit of one baseline's folder reruns
    that baseline's jobs only."""
    if row is None:
        return deps.stage_files(stage, root=workflow.basedir)
    return deps.row_files(stage, row, root=workflow.basedir)


def params_slice(stage, row=None):
    """The stage's params as one JSON string: Snakemake reruns the rule when it changes. With ``row``, only the
    params that row's runs read (cpsl.config.rows.run_params): an edit of a baseline's section reruns that baseline only."""
    source = rows.run_params(config, row) if row is not None else config
    return json.dumps(stage_slice(source, stage, missing_ok=row is not None), sort_keys=True)


# The software of every job: the active environment by default; with `--sdm conda` a conda environment that
# workflow/envs/cpsl.post-deploy.sh fills with workflow/setup.sh (the same install as the README's).
CONDA_ENV = "../envs/cpsl.yaml"

# the run folders' row wildcard: every row ID (Table 2 IDs, T0, the Table 1 baselines)
ROW_PATTERN = rows.snakemake_pattern()


def run_dir(ablation, seed):
    return str(paths.run_dir(DATASET, ablation, seed))


GRID, TABLE1 = config["grid"], config["table1"]  # the --config workflow switches (cpsl.config.workflow_config)


def grid_ablations():
    """The rows to train, each once: the configured `ablations`; `--config grid=true` adds the whole Table 2
    grid, `--config table1=true` T0, A6 and every Table 1 baseline. Duplicate paper rows map to one run (B1 -> A1)."""
    return rows.trained_rows(ABLATIONS, GRID, TABLE1)


def declared_outputs():
    """Every output a job of this run declares, up to the evaluate stage (the report's are report_outputs())."""
    cache = paths.processed_path(DATASET)
    runs = [f"{run_dir(a, s)}/{name}" for a in grid_ablations() for s in SEEDS
            for name in run_folder.TRAIN_OUTPUTS + run_folder.EVALUATE_OUTPUTS]
    return [str(paths.manifest_path(DATASET)), str(cache), str(cache.with_suffix(".report.json"))] + runs


def report_outputs():
    folder = paths.reports_dir(DATASET)
    return [str(paths.summary_path(DATASET))] + [str(folder / name) for name in paths.REPORT_FILES]


# The run folder of a train/evaluate job, with its wildcards (f-string: `{{...}}` stays a wildcard)
RUN = f"results/{DATASET}/{{ablation}}-seed{{seed}}"


def log_file(stage, job=""):
    """One log per job (stdout and stderr of its `cpsl` command), under logs/<dataset>/; Snakemake names it when
    the job fails and prints it (workflow/profiles/default: show-failed-logs)."""
    return f"logs/{DATASET}/{stage}/{job}.log" if job else f"logs/{DATASET}/{stage}.log"


def benchmark_file(stage):
    """Snakemake's per-job record of wall time and peak memory (train jobs), summarised by the `benchmarks` rule.
    Under logs/, not results/: DVC's report stage hashes the whole results folder."""
    return f"logs/{DATASET}/benchmarks/{stage}/{{ablation}}-seed{{seed}}.tsv"


def run_outputs():
    """The files of every configured run the report reads."""
    files = []
    for ablation in grid_ablations():
        for seed in SEEDS:
            base = run_dir(ablation, seed)
            files += [f"{base}/metrics.json", f"{base}/predictions.csv", f"{base}/history.csv"]
    return files


def run_benchmarks():
    return [benchmark_file("train").format(ablation=a, seed=s) for a in grid_ablations() for s in SEEDS]


def benchmarks_table():
    return str(paths.reports_dir(DATASET) / "benchmarks.md")
