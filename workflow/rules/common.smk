# Shared helpers for the rules: paths (from cpsl.paths), the per-stage params slices and code files.
import json

from cpsl import deps, paths, run_folder
from cpsl.ablations import trained_rows
from cpsl.config import STAGE_PARAMS

DATASET = config["dataset"]
ABLATIONS = config["ablations"]
SEEDS = config["train"]["seeds"]


def code(stage):
    """The package files the stage runs (cpsl.deps, from this repository's src/cpsl): one input per file,
    so an edit reruns exactly the stages that import it (a folder's mtime does not change on such an edit)."""
    return deps.stage_files(stage, root=workflow.basedir)


def params_slice(stage):
    """The stage's params as one JSON string: Snakemake reruns the rule when it changes."""
    out = {}
    for dotted in STAGE_PARAMS[stage]:
        node = config
        for key in dotted.split("."):
            node = node[key]
        out[dotted] = node
    return json.dumps(out, sort_keys=True)


def run_dir(ablation, seed):
    return str(paths.run_dir(DATASET, ablation, seed))


GRID = str(config.get("grid", "false")).lower() in ("1", "true", "yes")


def grid_ablations():
    """The rows to train, each once: `--config grid=true` the whole Table 2 grid plus the configured rows
    (T0); otherwise the configured `ablations`. Duplicate paper rows map to one run (B1 -> A1, ...)."""
    return trained_rows(ABLATIONS, GRID)


def declared_outputs():
    """Every output a job of this run declares, up to the evaluate stage (the report's are report_outputs())."""
    cache = paths.processed_path(DATASET)
    runs = [f"{run_dir(a, s)}/{name}" for a in grid_ablations() for s in SEEDS
            for name in run_folder.TRAIN_OUTPUTS + run_folder.EVALUATE_OUTPUTS]
    return [str(paths.raw_dir(DATASET)), str(cache), str(cache.with_suffix(".report.json"))] + runs


def report_outputs():
    folder = paths.reports_dir(DATASET)
    return [str(paths.summary_path(DATASET))] + [str(folder / name) for name in paths.REPORT_FILES]
