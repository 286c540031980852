"""Each stage declares, for both engines, exactly the package files it runs (cpsl.deps, from the import graph).

The runtime side (the modules a real `cpsl <stage>` loads are all declared) is checked in
tests/test_e2e_workflows.py, on the project the engines ran.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cpsl import deps

REPO = Path(__file__).resolve().parents[1]


def _dvc_code_deps(text: str) -> dict[str, set[str]]:
    stages = yaml.safe_load(text)["stages"]
    return {name: {d for d in stage["deps"] if d.startswith(deps.SRC_PREFIX)} for name, stage in stages.items()}


def test_dvc_yaml_declares_the_import_graph():
    text = (REPO / "dvc.yaml").read_text()
    assert deps.render_dvc(text, root=REPO) == text, "dvc.yaml is out of date: run `cpsl deps --write-dvc`"
    declared = _dvc_code_deps(text)
    for stage in deps.STAGES:
        assert declared[stage] == set(deps.stage_files(stage, root=REPO)), stage
    check = subprocess.run([sys.executable, "-m", "cpsl.cli", "deps", "--check-dvc", str(REPO / "dvc.yaml")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_no_declared_code_file_is_empty():
    """DVC prints "WARNING: '<file>' is empty." each time it hashes an empty dependency (issue 17: the
    sub-packages' __init__.py files); every package file a stage declares has at least a docstring."""
    empty = sorted({f for stage in deps.STAGES for f in deps.stage_files(stage, root=REPO)
                    if (REPO / f).stat().st_size == 0})
    assert not empty, f"empty code deps (DVC warns on each): {empty}"


def test_the_graph_follows_lazy_imports_and_shared_modules():
    train = set(deps.stage_files("train", root=REPO))
    # run_train imports the loop inside a function; the loop imports the model and the shared modules
    assert {"src/cpsl/train/loop.py", "src/cpsl/model/heads.py", "src/cpsl/metrics.py", "src/cpsl/cache.py",
            "src/cpsl/run_folder.py", "src/cpsl/model/__init__.py"} <= train
    assert {"src/cpsl/csd.py", "src/cpsl/align/stage.py"} <= set(deps.stage_files("align", root=REPO))
    assert {"src/cpsl/metrics.py", "src/cpsl/ablations.py"} <= set(deps.stage_files("report", root=REPO))
    # the CLI's dispatch imports pick one stage: none pulls in another stage's code
    assert not any(f.startswith("src/cpsl/train/") for f in deps.stage_files("report", root=REPO))
    assert not any(f.startswith("src/cpsl/model/") for f in deps.stage_files("align", root=REPO))


def test_a_new_undeclared_import_fails_the_check(tmp_path):
    """A stage starts importing a project module: the declared deps no longer match, and the check says so."""
    for name in ("dvc.yaml", "src"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, tmp_path / name)
    heads = tmp_path / "src/cpsl/model/heads.py"
    heads.write_text(heads.read_text() + "\n\ndef _table():\n    from cpsl.report import table2  # noqa: F401\n")
    assert "src/cpsl/report/table2.py" in deps.stage_files("train", root=tmp_path)
    assert "src/cpsl/report/table2.py" in deps.stage_files("evaluate", root=tmp_path)
    check = subprocess.run([sys.executable, "-m", "cpsl.cli", "deps", "--check-dvc", str(tmp_path / "dvc.yaml")],
                           capture_output=True, text=True)
    assert check.returncode == 1 and "cpsl deps --write-dvc" in check.stderr
    subprocess.run([sys.executable, "-m", "cpsl.cli", "deps", "--write-dvc", str(tmp_path / "dvc.yaml")], check=True)
    assert "src/cpsl/report/table2.py" in _dvc_code_deps((tmp_path / "dvc.yaml").read_text())["train"]


def test_a_project_without_the_package_is_an_error_not_an_empty_list(tmp_path):
    with pytest.raises(FileNotFoundError, match="no cpsl package here"):
        deps.stage_files("train", root=tmp_path)
