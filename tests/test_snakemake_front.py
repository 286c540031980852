"""Snakemake as its users expect (issue 24, item 4): a log per job, benchmarks of the train jobs summarised in one
table, `snakemake --report` with Tables 1-2, the figures and each run's metrics, and an incomplete raw folder (no
manifest) that makes Snakemake rerun prepare. (Lint: tests/test_workflow_parity.py.)"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from project_copy import copy_finished_project, copy_project, engine_env, write_tiny_demo_params

from cpsl.report import job_benchmarks

REPO = Path(__file__).resolve().parents[1]
SRC = str(REPO / "src")

BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _bench(folder: Path, stage: str, name: str, seconds: str, rss: str) -> Path:
    path = folder / stage / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(BENCH_HEADER + f"{seconds}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t50\t1\n")
    return path


def test_benchmarks_table_lists_each_job_and_totals_per_stage(tmp_path):
    files = [_bench(tmp_path, "train", "A6-seed0.tsv", "12.5", "812.3"),
             _bench(tmp_path, "train", "A6-seed1.tsv", "7.5", "900"),
             _bench(tmp_path, "evaluate", "A6-seed0.tsv", "0.4", "-")]  # too short to sample: n/a
    out = tmp_path / "benchmarks.md"
    assert job_benchmarks.main([str(out), *map(str, files)]) == 0
    text = out.read_text()
    assert "| train | A6 | 0 | 12.5 | 812 |" in text and "| train | A6 | 1 | 7.5 | 900 |" in text
    assert "| evaluate | A6 | 0 | 0.4 | n/a |" in text
    assert "| train | 2 | 20.0 | 12.5 | 900 |" in text and "| evaluate | 1 | 0.4 | 0.4 | n/a |" in text


@pytest.mark.parametrize("content, fragment", [
    ("", "no benchmark record (no 's' column)"),
    (BENCH_HEADER + "soon\t0\t1\t1\t1\t1\t0\t0\t0\t0\n", "wall time 's' is 'soon', not a number of seconds"),
    ("\xff\xfe\x00garbage", "cannot be read as Snakemake's benchmark TSV"),
])
def test_a_malformed_benchmark_file_is_one_line_naming_it(tmp_path, content, fragment):
    bad = tmp_path / "train" / "A6-seed0.tsv"
    bad.parent.mkdir()
    bad.write_bytes(content.encode("latin-1"))
    out = tmp_path / "benchmarks.md"
    proc = subprocess.run([sys.executable, "-m", "cpsl.report.job_benchmarks", str(out), str(bad)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC})
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"cpsl.report.job_benchmarks: error: {bad}: "), proc.stderr
    assert fragment in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()  # nothing half-written


def _project(dest: Path) -> Path:
    copy_project(dest, ("Snakefile", "workflow", "profiles", "src", ".gitignore"))
    return write_tiny_demo_params(dest, ["A6"])


def _snakemake(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["snakemake", *args], cwd=root, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env=engine_env(), timeout=600)


def _jobs(out: str) -> set[str]:
    return set(re.findall(r"^(?:local)?rule (\w+):", out, re.M)) - {"all"}


@pytest.mark.parametrize("left", ["empty", "files without a manifest"])
def test_a_raw_folder_without_a_manifest_is_rebuilt_by_prepare(tmp_path, left):
    """A failed hand-run `cpsl prepare` leaves data/raw/<dataset>/ without manifest.json (written last): Snakemake
    must schedule prepare again (was: the folder was the output, present, so align failed "run cpsl prepare")."""
    project = _project(tmp_path / "p")
    raw = project / "data" / "raw" / "demo"
    raw.mkdir(parents=True)
    if left != "empty":
        (raw / "CMU_MOSI_TimestampedWords.csd").write_bytes(b"half a download")
    proc = _snakemake(project, "-n", "--cores", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {"prepare", "align"} <= _jobs(proc.stdout), proc.stdout[-3000:]


@pytest.mark.slow
def test_a_run_logs_each_job_benchmarks_train_and_builds_the_html_report(tiny_demo_snakemake_run, tmp_path):
    shared = tiny_demo_snakemake_run.root  # the session's `snakemake --cores 2` of the tiny demo (conftest)
    # each job's output went to its own log, not the terminal
    logs = shared / "logs" / "demo"
    assert "prepare: demo (demo)" in (logs / "prepare.log").read_text()
    assert "cpsl train: " in (logs / "train" / "A6-seed0.log").read_text()
    for name in ("align.log", "evaluate/A6-seed0.log", "report.log", "benchmarks.log"):
        assert (logs / name).is_file(), name
    assert "prepare: demo" not in tiny_demo_snakemake_run.output
    table = (shared / "reports" / "demo" / "benchmarks.md").read_text()
    assert re.search(r"^\| train \| A6 \| 0 \| \d+\.\d \| (\d+|n/a) \|$", table, re.M), table
    assert "| evaluate |" not in table  # (no benchmark on evaluate: workflow/rules/train.smk says why)

    project = copy_finished_project(shared, tmp_path / "p")  # (the report is written into the project)
    report = project / "report.html"
    proc = _snakemake(project, "--report", str(report))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    html = report.read_text()
    for name in ("table1.md", "table2.md", "table2.csv", "figure2_losses.png", "figure3_modulation.png",
                 "summary.json", "results.json", "benchmarks.md", "results/demo/A6-seed0/metrics.json"):
        assert name in html, name
    for caption in ("Table 2: the ablation grid", "Figure 3: the modulation coefficients", "Wall time and peak"):
        assert caption in html, caption
    for category in ("Tables", "Figures", "Runs", "Benchmarks"):
        assert category in html, category
