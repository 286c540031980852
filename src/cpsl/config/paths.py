"""Where each stage reads and writes, relative to the repository root. One place, so that the
Snakefile, dvc.yaml and the stages agree (tests/test_workflow_parity.py checks the engines)."""
from __future__ import annotations

from pathlib import Path

# The raw folder's completeness mark, the engines' prepare output; its format and every other raw file name:
# cpsl.formats.raw_folder (which takes this name from here: config sits below formats).
RAW_MANIFEST_NAME = "manifest.json"


def raw_dir(dataset: str) -> Path:
    return Path("data/raw") / dataset


def manifest_path(dataset: str) -> Path:
    return raw_dir(dataset) / RAW_MANIFEST_NAME


def processed_path(dataset: str) -> Path:
    return Path("data/processed") / f"{dataset}.h5"


def results_dir(dataset: str) -> Path:
    """The folder of every run folder of a dataset (the report stage's input)."""
    return Path("results") / dataset


def run_dir(dataset: str, ablation: str, seed: int) -> Path:
    """One (ablation, seed) run; its files are named in cpsl.formats.run_folder."""
    return results_dir(dataset) / f"{ablation}-seed{seed}"


def reports_dir(dataset: str) -> Path:
    return Path("reports") / dataset


def summary_path(dataset: str) -> Path:
    # Not results/<dataset>/summary.json: DVC's report stage depends on the whole results/<dataset>
    # folder (so any list of seeds or the ablation grid is picked up), and a stage may not write
    # inside its own dependency.
    return reports_dir(dataset) / "summary.json"


# The report's small per-row results (cpsl.report.results_metrics): DVC's `metrics` of the report stage.
RESULTS_METRICS_FILE = "results.json"

# Files the report stage writes into reports_dir(dataset), besides summary.json.
REPORT_FILES = (
    "table1.md", "table1.csv", "table2.md", "table2.csv", "figure2_losses.png", "figure3_modulation.png",
    "history_mean.csv", RESULTS_METRICS_FILE,
)
