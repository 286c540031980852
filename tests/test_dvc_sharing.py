"""DVC as its users expect (issue 24, item 5), on a tiny demo in a throw-away git repo.

1. The report stage's reports/<dataset>/results.json is DVC's `metrics`: `dvc metrics show` lists each row's mean
   MAE, Corr, Acc-2 and a/v mark; after an experiment `dvc exp show --only-changed` and `dvc metrics diff` show them.
2. Trained runs shared through a DVC remote (a local folder): `dvc push` from one clone, `git clone` + `dvc pull`
   in a fresh one; `dvc repro` there then reruns no train stage (the data stages, not in DVC's cache, are rebuilt).

The project's first results are the session's Snakemake run of the same tiny demo (conftest), adopted by `dvc
commit` rather than trained again by `dvc repro`: the two engines run the same commands to the same outputs
(tests/test_workflow_parity.py, tests/test_e2e_workflows.py); what is tested here starts after that run.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from project_copy import copy_finished_project, engine_env

RESULTS = "reports/demo/results.json"

pytestmark = pytest.mark.slow


def env(root: Path) -> dict:
    return engine_env(DVC_NO_ANALYTICS="1")


def run(root: Path, *cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env(root), stdin=subprocess.DEVNULL,
                          timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def commit(root: Path, message: str) -> None:
    run(root, "git", "add", "-A")
    run(root, "git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qm", message)


def dvc_ran(out: str) -> set[str]:
    return {s.split("@")[0] for s in re.findall(r"Running stage '([^']+)'", out)}


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_demo_snakemake_run):
    """A repo with the pipeline and a tiny demo (6 videos, 1 epoch, 1 seed, one row), run once: a copy of the
    session's Snakemake run, whose outputs `dvc commit` records in dvc.lock and DVC's cache."""
    root = copy_finished_project(tiny_demo_snakemake_run.root, tmp_path_factory.mktemp("share") / "origin")
    run(root, "git", "init", "-q")
    commit(root, "pipeline")
    run(root, "dvc", "commit", "--force")
    commit(root, "results")  # results.json is in git (cache: false), like DVC's metrics should be
    return root


def test_results_json_is_the_report_s_dvc_metrics(project):
    results = json.loads((project / RESULTS).read_text())
    assert set(results) == {"A6"} and {"mae", "corr", "acc2", "seeds"} <= set(results["A6"])
    shown = json.loads(subprocess.run(["dvc", "metrics", "show", "--json"], cwd=project, env=env(project),
                                      capture_output=True, text=True, check=True).stdout)
    assert shown[""]["data"][RESULTS]["data"]["A6"]["mae"] == results["A6"]["mae"]

    # (a 1-epoch demo: cp.eta would change nothing yet; the learning rate does)
    run(project, "dvc", "exp", "run", "-S", "train.lr=0.003", "--name", "lr3e-3")
    table = run(project, "dvc", "exp", "show", "--only-changed", "--csv")
    header = table.splitlines()[0].split(",")
    assert "A6.mae" in header and "train.lr" in header, header  # compared by results, beside the changed param
    assert len(header) < 20, header  # not hundreds of columns (every param, every run's metrics.json)
    diff = run(project, "dvc", "metrics", "diff", "HEAD", "lr3e-3")
    assert re.search(rf"^{re.escape(RESULTS)}\s+A6\.mae\s", diff, re.M), diff
    run(project, "git", "checkout", "--", ".")  # back to the committed results for the next test


def test_trained_runs_shared_through_a_local_remote_are_not_retrained(project, tmp_path):
    remote = tmp_path / "remote"
    run(project, "dvc", "remote", "add", "-d", "shared", str(remote))
    commit(project, "a shared remote")
    run(project, "dvc", "push")
    assert any(remote.rglob("*")), "dvc push sent nothing"

    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(project), str(clone))
    assert not (clone / "results").exists()
    run(clone, "dvc", "pull", "--allow-missing")  # the data stages' outputs are not in the cache: rebuilt below
    assert (clone / "results/demo/A6-seed0/best.pt").is_file()
    out = run(clone, "dvc", "repro")
    ran = dvc_ran(out)
    assert "train" not in ran, out[-4000:]  # the pulled runs are used as they are
    assert {"prepare", "align"} <= ran  # (the raw folder and the cache are not in DVC's cache)
    assert dvc_ran(run(clone, "dvc", "repro")) == set()
    assert json.loads((clone / RESULTS).read_text()) == json.loads((project / RESULTS).read_text())
