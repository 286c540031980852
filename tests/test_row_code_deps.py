"""Issue 23: code deps per row under both engines. An edit in one baseline's folder reruns that baseline's jobs
only, an edit of the CP+SL model (cpsl/model/) no baseline's, an edit of a baseline's README (its provenance notes)
nothing; Snakemake declares each train/evaluate job's own files (cpsl.runtime.deps.row_files), DVC one folder of links
per
row (workflow/row_code/<row>). Both engines see a project copy as built (placeholders, no stage runs)."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from project_copy import copy_project, settle_without_running, write_tiny_demo_params

ROWS = ["A6", "MMIM", "MAG"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dest = copy_project(tmp_path_factory.mktemp("rowcode"),
                        ("Snakefile", "dvc.yaml", "workflow", "profiles", "src", ".dvc", ".dvcignore", ".gitignore"))
    write_tiny_demo_params(dest, ROWS)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    settle_without_running(dest)
    assert smk_jobs(dest) == set() and dvc_stale(dest) == set()
    return dest


def smk_jobs(root: Path) -> set[str]:
    """'<rule>@<row>' for each job a Snakemake run would execute now (its dry run), '<rule>' for rules without a row."""
    out = subprocess.run(["snakemake", "-n", "--cores", "1"], cwd=root, capture_output=True, text=True, check=True)
    jobs = set()
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", out.stdout):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if rule and rule.group(1) != "all":
            row = re.search(r"^\s+wildcards: ablation=(\w+)", block, re.M)
            jobs.add(f"{rule.group(1)}@{row.group(1)}" if row else rule.group(1))
    return jobs


def dvc_stale(root: Path) -> set[str]:
    """'<stage>@<row>' for each stage instance whose deps changed since dvc.lock (`dvc status`)."""
    status = subprocess.run(["dvc", "status", "--json"], cwd=root, capture_output=True, text=True, check=True)
    return {re.sub(r"-\d+$", "", name) for name in json.loads(status.stdout)}


def _after(project: Path, file: str) -> tuple[set[str], set[str]]:
    """The jobs each engine would rerun after a comment is appended to ``file``; then the file is put back as it
    was, times included (Snakemake compares times, DVC contents)."""
    path = project / file
    before, times = path.read_text(), os.stat(path)
    path.write_text(before + "\n# an edit\n")
    try:
        return smk_jobs(project), dvc_stale(project)
    finally:
        path.write_text(before)
        os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))


def test_a_baseline_edit_reruns_that_baseline_only(project):
    smk, dvc = _after(project, "src/cpsl/baselines/mmim/estimators.py")
    assert smk == {"train@MMIM", "evaluate@MMIM", "report", "benchmarks"}
    assert dvc == {"train@MMIM", "evaluate@MMIM"}  # `dvc status`: the stages whose own deps changed


def test_a_cpsl_model_edit_reruns_no_baseline(project):
    smk, dvc = _after(project, "src/cpsl/model/modulation.py")
    assert smk == {"train@A6", "evaluate@A6", "report", "benchmarks"}
    assert dvc == {"train@A6", "evaluate@A6"}


def test_a_provenance_edit_reruns_nothing(project):
    smk, dvc = _after(project, "src/cpsl/baselines/mag/README.md")
    assert smk == set() and dvc == set()


def test_a_shared_kit_edit_reruns_every_row(project):
    """The other side: the generic train kit is every row's code."""
    smk, dvc = _after(project, "src/cpsl/train/loop.py")
    assert {j for j in smk if j.startswith("train@")} == {f"train@{r}" for r in ROWS}
    assert {j for j in dvc if j.startswith("train@")} == {f"train@{r}" for r in ROWS}
