"""Copy parts of this repository into a throw-away project folder (engine, SLURM and parity tests), give it a tiny
demo params.yaml, run that tiny demo once with Snakemake (conftest's session fixture), copy a finished project, and
load a benchmarks/ script as a module (the study tests)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def copy_project(dest: Path, names) -> Path:
    """Copy each top-level ``name`` (file or folder) of the repository into ``dest`` (created), without caches."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, symlinks=True,  # workflow/row_code: links stay links
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, dest / name)
    return dest


def write_tiny_demo_params(dest: Path, ablations, videos: int = 6, max_segments: int = 3) -> Path:
    """``dest``/params.yaml: the repository's params with a tiny demo (3 to ``max_segments`` segments per video),
    one epoch, seed 0 and the given rows."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["demo"].update(videos=videos, min_segments=3, max_segments=max_segments)
    params["train"].update(epochs=1, seeds=[0])
    params["demo"]["train"]["epochs"] = 1  # the demo's own schedule replaces train.epochs
    params["ablations"] = list(ablations)
    (Path(dest) / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return Path(dest)


# the pipeline under both engines: a finished Snakemake run can be adopted by DVC (`dvc commit`)
PIPELINE_FILES = ("Snakefile", "dvc.yaml", "workflow", "profiles", "src", ".dvc", ".dvcignore", ".gitignore")


def engine_env(**extra: str) -> dict:
    """The environment the engines run the stages in: this repository's code, offline, one torch thread."""
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", **extra}


def run_tiny_demo_with_snakemake(dest: Path) -> str:
    """A project at ``dest`` with the tiny demo (row A6) run by `snakemake --cores 2`; returns what Snakemake
    printed (stdout and stderr)."""
    write_tiny_demo_params(copy_project(dest, PIPELINE_FILES), ["A6"])
    proc = subprocess.run(["snakemake", "--cores", "2"], cwd=dest, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=engine_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def copy_finished_project(src: Path, dest: Path) -> Path:
    """A copy of a finished project (links kept as links, times kept: Snakemake's and DVC's view of it is the
    same), so a test may run the engines in it without changing the shared original."""
    shutil.copytree(src, dest, symlinks=True)
    return Path(dest)


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (the folder is no package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settle_without_running(project: Path) -> None:
    """Make both engines see ``project`` as fully built without running a stage: every output the Snakemake
    dry run declares (benchmark records too) is a placeholder, `dvc commit` records them in dvc.lock and
    `snakemake --touch` orders their times. What an edit then makes out of date is what it would rerun; the
    placeholders are never read (tests/test_row_code_deps.py)."""
    import re
    import subprocess

    dry = subprocess.run(["snakemake", "-n", "--forceall", "--cores", "1"], cwd=project, capture_output=True,
                         text=True, check=True).stdout
    for paths in re.findall(r"^\s+(?:output|benchmark): (.*)$", dry, re.M):
        for path in (re.sub(r" \(update\)$", "", p.strip()) for p in paths.split(",")):
            target = project / path
            if path.endswith("dvclive"):  # the one directory output
                target.mkdir(parents=True, exist_ok=True)
                (target / "placeholder").write_text("x")
                # the file `snakemake --touch` times a directory by: there before DVC records the folder
                (target / ".snakemake_timestamp").touch()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("x")
    # DVC first: committing moves the outputs into its cache and links them back (new times), then Snakemake
    subprocess.run(["dvc", "commit", "-f", "-q"], cwd=project, capture_output=True, check=True)
    subprocess.run(["snakemake", "--touch", "--cores", "1"], cwd=project, capture_output=True, check=True)
