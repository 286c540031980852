"""benchmarks/gpu_session.sh and bench_gpu.py on the CPU (SMOKE=1): the prepared device session cannot lose its
numbers. Each step is its own process whose JSON is kept as it ends; a step that fails leaves the others' results;
the graph case runs as auto and reports what really ran; the budget is capped so that the session ends inside its
limit; one table is printed at the end. (The GPU figures themselves need a GPU: benchmarks/RESULTS.md.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def _session(out: Path, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "SMOKE": "1", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_session.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_each_step_keeps_its_result_and_the_session_ends_with_one_table(tmp_path):
    # one bench case (auto: on the CPU it runs as eager, and says so) and gpu_check_train, which fails at once
    # without a GPU (exit 2, no JSON): the failure costs only that step
    proc = _session(tmp_path, ONLY="^(bench_A6_fp32_auto|gpu_check_train)$")
    assert proc.returncode == 0, proc.stderr[-2000:]
    case = json.loads((tmp_path / "bench_A6_fp32_auto.json").read_text())
    assert case["step"] == "auto" and case["ran_as"] == "eager" and case["stage"] == "done"
    assert case["steps_per_s"] > 0 and "error" not in case
    assert not (tmp_path / "gpu_check_train.json").exists() and not list(tmp_path.glob("*.tmp"))
    exits = (tmp_path / "exits.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in exits] == ["bench_A6_fp32_auto", "gpu_check_train"]
    assert "exit 0" in exits[0] and "exit 2" in exits[1]
    table = (tmp_path / "summary.md").read_text()
    assert "| bench_A6_fp32_auto | A6 | fp32 | auto | eager | foreach | body |" in table
    assert "Steps without a result:\n- gpu_check_train: exit 2" in table
    assert table in proc.stdout


def test_the_budget_is_capped_inside_the_session_limit_and_skips_what_it_cannot_fit(tmp_path):
    proc = _session(tmp_path, SESSION_LIMIT_S="40", BUDGET_S="600")  # budget capped to 40 - 25 = 15 s < 20 s
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(budget 15 s, limit 40 s)" in proc.stdout
    exits = (tmp_path / "exits.txt").read_text().splitlines()
    assert len(exits) > 20 and all("skipped (budget" in line for line in exits), exits
    assert exits[0].startswith("bench_A6_fp32_eager:")  # the most important step first
    assert not list(tmp_path.glob("bench_*.json"))


def test_a_failing_case_reports_its_error_in_its_json(capsys):
    import bench_gpu

    # a strict cuda_graph case on the CPU cannot run: the case's JSON says why, with the stage it reached
    assert bench_gpu.main(["--smoke", "--step", "cuda_graph"]) == 1
    record = json.loads(capsys.readouterr().out)
    assert record["kind"] == "bench_gpu_case" and record["stage"] == "build"
    assert "execution.step: cuda_graph needs one process on a CUDA device" in record["error"]


def test_the_summary_reads_the_baselines_and_grid_results_apart(tmp_path):
    """bench_baselines and bench_grid_throughput both write a "rows" entry (a mapping per row, a list per K): each
    gets its own line in the summary, and neither breaks the other's."""
    import gpu_session_summary

    baselines = {"device": "cuda", "text_model": "deberta-v3-base-arch", "rows": {
        "A6": {"eager": {"median_step_s": 0.08, "ran_as": "eager"}, "auto": {"median_step_s": 0.03, "ran_as":
               "cuda_graph"}, "memory": {"cuda_peak_allocated_mb": 3700.0}, "step_time_vs_A6": 1.0},
        "MMIM": {"eager": {"median_step_s": 0.1, "ran_as": "eager"}, "memory": {"cuda_peak_allocated_mb": 3500.0},
                 "step_time_vs_A6": 1.25}}}
    grid = {"rows": [{"jobs": 4, "steps_per_s_total": 40.0, "runs_per_hour": 2.5}]}
    (tmp_path / "bench_baselines.json").write_text(json.dumps(baselines))
    (tmp_path / "grid_4_auto.json").write_text(json.dumps(grid))
    text = gpu_session_summary.summarise(tmp_path)
    assert ("- bench_baselines (deberta-v3-base-arch, cuda): A6: eager 80 ms (ran as eager), auto 30 ms (ran as "
            "cuda_graph); x A6 1.00; peak 3700 MB | MMIM: eager 100 ms (ran as eager); x A6 1.25; peak 3500 MB") in text
    assert "- grid_4_auto: K=4: 40.0 steps/s, 2.5 runs/h (execution.step auto)" in text
