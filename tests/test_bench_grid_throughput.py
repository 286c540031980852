"""benchmarks/bench_grid_throughput.py --smoke: the K-concurrent-jobs harness runs end to end on the CPU
(tiny DeBERTa, K = 1 and 2 worker processes released together) and reports consistent figures."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_grid_throughput_smoke():
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_grid_throughput.py"), "--smoke"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["steps_per_30_epoch_run"] == 30 * 8  # 64 smoke segments / batch 8 = 8 steps per epoch
    assert [r["jobs"] for r in out["rows"]] == [1, 2]
    for row in out["rows"]:
        assert row["steps_per_s_total"] > 0
        # the window covers every job's steps, so it can never beat the sum of the jobs' own rates
        assert row["steps_per_s_total"] <= row["steps_per_s_sum_of_jobs"] * 1.0001
        assert abs(row["runs_per_hour"] - row["steps_per_s_total"] * 3600 / 240) < 1e-6
    assert "| 2 |" in proc.stderr
