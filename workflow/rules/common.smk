# Shared helpers for the rules: paths (from cpsl.paths) and the per-stage params slices.
import json

from cpsl import paths
from cpsl.config import STAGE_PARAMS

DATASET = config["dataset"]
ABLATION = config["ablation"]
SEEDS = config["train"]["seeds"]
CODE = "src/cpsl"


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


def grid_ablations():
    """`--config grid=true` runs the whole Table 2 grid; otherwise the configured ablation only."""
    if str(config.get("grid", "false")).lower() in ("1", "true", "yes"):
        from cpsl.ablations import ABLATIONS
        return list(ABLATIONS)
    return [ABLATION]


def report_outputs():
    folder = paths.reports_dir(DATASET)
    return [str(paths.summary_path(DATASET))] + [str(folder / name) for name in paths.REPORT_FILES]
