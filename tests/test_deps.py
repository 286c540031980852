"""Each stage declares, for both engines, exactly the package files it runs (cpsl.runtime.deps, from the import graph).

The runtime side (the modules a real `cpsl <stage>` loads are all declared) is checked in
tests/test_e2e_workflows.py, on the project the engines ran.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cpsl.runtime import deps

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
    # run_train imports the loop inside a function; the loop imports the shared modules and the row lookup
    assert {"src/cpsl/train/loop.py", "src/cpsl/nn/zoo.py", "src/cpsl/metrics/scores.py", "src/cpsl/formats/cache.py",
            "src/cpsl/formats/run_folder.py", "src/cpsl/nn/__init__.py"} <= train
    # the CP+SL model is the CP+SL rows' own code, found by name (cpsl.nn.zoo, cpsl.train.recipes)
    assert {"src/cpsl/model/heads.py", "src/cpsl/model/__init__.py", "src/cpsl/model/recipe.py"} <= set(
        deps.row_files("train", "A6", root=REPO))
    assert {"src/cpsl/formats/csd.py", "src/cpsl/stages/align.py"} <= set(deps.stage_files("align", root=REPO))
    assert {"src/cpsl/metrics/scores.py", "src/cpsl/config/ablations.py"} <= set(deps.stage_files("report", root=REPO))
    # the CLI's dispatch imports pick one stage: none pulls in another stage's code
    assert not any(f.startswith("src/cpsl/train/") for f in deps.stage_files("report", root=REPO))
    assert not any(f.startswith("src/cpsl/model/") for f in deps.stage_files("align", root=REPO))


def _row_code(files) -> set[str]:
    """The files of ``files`` that are some row's own model: cpsl/model/ or a baseline's folder."""
    return {f for f in files if f.startswith("src/cpsl/model/") or re.match(r"src/cpsl/baselines/\w+/", f)}


def test_each_row_depends_on_its_own_code_and_the_shared_kit_only():
    """Issue 23: editing mmim/ retrained A6 and T0 too (the zoo imported every baseline)."""
    for stage in deps.ROW_STAGES:
        kit = set(deps.stage_files(stage, root=REPO))
        assert _row_code(kit) == set(), stage  # the kit holds no row's model
        mmim = set(deps.row_files(stage, "MMIM", root=REPO))
        assert _row_code(mmim) == {f"src/cpsl/baselines/mmim/{m}.py"
                                   for m in ("__init__", "model", "recipe", "spec", "estimators")}, stage
        assert kit <= mmim
        for cpsl_row in ("A6", "T0", "A0"):
            own = _row_code(deps.row_files(stage, cpsl_row, root=REPO))
            assert own and all(f.startswith("src/cpsl/model/") for f in own), (stage, cpsl_row)
        assert not any(f.endswith(".md") for f in mmim)  # README.md: provenance notes, no code


def test_prepare_align_and_report_depend_on_no_model_and_no_baseline_code():
    """The baselines' spec.py files are read for params validation only (imported by name in
    cpsl.baselines.registry): they can never change these stages' outputs, so they are not deps."""
    for stage in ("prepare", "align", "report"):
        files = deps.stage_files(stage, root=REPO)
        assert _row_code(files) == set(), stage
        assert not any(f.startswith("src/cpsl/nn/") for f in files), stage  # nor torch building blocks
        assert files == deps.row_files(stage, "MMIM", root=REPO)  # no per-row part


def test_the_row_code_links_are_up_to_date():
    stale = deps.row_code_stale(REPO)
    assert stale == [], f"{deps.ROW_CODE_DIR} is out of date ({stale[:3]}): run `cpsl deps --write-dvc`"
    mmim = REPO / deps.ROW_CODE_DIR / "MMIM/src/cpsl/baselines/mmim/model.py"
    assert mmim.is_symlink() and mmim.resolve() == (REPO / "src/cpsl/baselines/mmim/model.py").resolve()


def test_a_new_undeclared_import_fails_the_check(tmp_path):
    """A stage starts importing a project module: the declared deps no longer match, and the check says so; for a
    row's own code (cpsl/model/ here) it is that row's link folder that goes stale."""
    for name in ("dvc.yaml", "src", "workflow"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, tmp_path / name, symlinks=True)
        else:
            shutil.copy(REPO / name, tmp_path / name)
    check = [sys.executable, "-m", "cpsl.cli", "deps", "--check-dvc", str(tmp_path / "dvc.yaml")]
    assert subprocess.run(check, capture_output=True, text=True).returncode == 0
    heads = tmp_path / "src/cpsl/model/heads.py"
    heads.write_text(heads.read_text() + "\n\ndef _table():\n    from cpsl.report import table2  # noqa: F401\n")
    assert "src/cpsl/report/table2.py" in deps.row_files("train", "A6", root=tmp_path)
    assert "src/cpsl/report/table2.py" in deps.row_files("evaluate", "A6", root=tmp_path)
    assert "src/cpsl/report/table2.py" not in deps.row_files("train", "MMIM", root=tmp_path)
    failed = subprocess.run(check, capture_output=True, text=True)
    assert failed.returncode == 1 and "cpsl deps --write-dvc" in failed.stderr and "row_code" in failed.stderr
    subprocess.run([sys.executable, "-m", "cpsl.cli", "deps", "--write-dvc", str(tmp_path / "dvc.yaml")], check=True)
    assert (tmp_path / deps.ROW_CODE_DIR / "A6/src/cpsl/report/table2.py").is_symlink()
    assert not (tmp_path / deps.ROW_CODE_DIR / "MMIM/src/cpsl/report/table2.py").exists()
    assert subprocess.run(check, capture_output=True, text=True).returncode == 0

    # and a kit module's new import goes into dvc.yaml's file list
    loop = tmp_path / "src/cpsl/train/loop.py"
    loop.write_text(loop.read_text() + "\n\ndef _table():\n    from cpsl.report import table1  # noqa: F401\n")
    assert subprocess.run(check, capture_output=True, text=True).returncode == 1
    subprocess.run([sys.executable, "-m", "cpsl.cli", "deps", "--write-dvc", str(tmp_path / "dvc.yaml")], check=True)
    assert "src/cpsl/report/table1.py" in _dvc_code_deps((tmp_path / "dvc.yaml").read_text())["train"]


def test_a_project_without_the_package_is_an_error_not_an_empty_list(tmp_path):
    with pytest.raises(FileNotFoundError, match="no cpsl package here"):
        deps.stage_files("train", root=tmp_path)


def test_the_run_fingerprint_code_is_per_row(tmp_path, monkeypatch):
    """deps.code_hash('train', row): an edit in MMIM's folder changes MMIM's runs' code identity only (was: every
    run's, so a state of A6 saved before an MMIM edit was discarded)."""
    pkg = tmp_path / "cpsl"
    shutil.copytree(REPO / "src/cpsl", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(deps, "package_dir", lambda: pkg)

    def hashes():
        deps.code_hash.cache_clear()
        return {row: deps.code_hash("train", row) for row in ("A6", "T0", "MAG", "MMIM")}

    before = hashes()
    assert before["A6"] == before["T0"] and len({before["A6"], before["MAG"], before["MMIM"]}) == 3
    estimators = pkg / "baselines/mmim/estimators.py"
    estimators.write_text(estimators.read_text() + "\n# an edit\n")
    after = hashes()
    deps.code_hash.cache_clear()
    assert {r for r in before if before[r] != after[r]} == {"MMIM"}
