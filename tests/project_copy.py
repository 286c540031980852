"""Copy parts of this repository into a throw-away project folder (engine, SLURM and parity tests)."""
from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def copy_project(dest: Path, names) -> Path:
    """Copy each top-level ``name`` (file or folder) of the repository into ``dest`` (created), without caches."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, dest / name)
    return dest
