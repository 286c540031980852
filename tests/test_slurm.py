"""The SLURM profile for real: a single-node SLURM (Debian's slurm-wlm + munge, fake GPUs) runs a small demo
grid (A0 and A6, one seed, one epoch, then the report) through `snakemake --executor slurm --profile
workflow/profiles/slurm`. Checks the outputs, that train/evaluate jobs were submitted with a GPU request and
data/report jobs without, and that the train job saw the GPU SLURM gave it (CUDA_VISIBLE_DEVICES).

It needs a SLURM from Debian's packages, so it runs only when TEST_SLURM=1 asks for it (a plain `pytest` on a fresh
machine skips it with one line saying so). .ci/run installs slurm-wlm and munge and sets TEST_SLURM=1: there,
missing tools are a failure, not a skip. Bring-up takes a few seconds; the whole test about two minutes on 2 cores."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from project_copy import copy_project, write_tiny_demo_params
from slurm_cluster import SlurmCluster, missing_tools

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE_TIMEOUT_S = 360

ENABLE_VAR = "TEST_SLURM"  # not CPSL_*: cpsl refuses CPSL_ variables it does not read
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get(ENABLE_VAR) != "1",
                       reason=f"the SLURM test is off: run `apt-get install slurm-wlm munge`, then set {ENABLE_VAR}=1"),
]


def demo_project(dest: Path) -> Path:
    copy_project(dest, ("Snakefile", "workflow", "src"))
    return write_tiny_demo_params(dest, ["A0", "A6"], videos=8, max_segments=4)


def parse_jobs(scontrol_out: str) -> list[dict]:
    """`scontrol -o show job`: one line per job, space-separated Key=Value (values without spaces here)."""
    jobs = []
    for line in scontrol_out.splitlines():
        if line.strip():
            jobs.append(dict(re.findall(r"(\w+)=(\S*)", line)))
    return jobs


def test_demo_grid_through_snakemake_slurm_executor(tmp_path):
    missing = missing_tools()
    assert not missing, f"{missing} not installed: apt-get install slurm-wlm munge (.ci/run does this)"
    assert shutil.which("snakemake") and "--slurm-status-command" in subprocess.run(
        ["snakemake", "--help"], capture_output=True, text=True).stdout, \
        "snakemake-executor-plugin-slurm is not installed (pip install -e '.[workflow]')"

    project = demo_project(tmp_path / "project")
    cluster = SlurmCluster(tmp_path / "slurm", gpus=2, cpus=16, mem_mb=64000)
    targets = [f"results/demo/{a}-seed0/{f}" for a in ("A0", "A6") for f in ("metrics.json", "predictions.csv")]
    targets += ["reports/demo/summary.json"]
    env = {**cluster.env, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    start = time.monotonic()
    with cluster:
        pids = cluster.pids()
        cmd = ["timeout", "-k", "10", str(SNAKEMAKE_TIMEOUT_S),
               "snakemake", "--executor", "slurm", "--profile", "workflow/profiles/slurm",
               # no slurmdbd here: no account to guess, and job states come from squeue (MinJobAge is 900 s)
               "--slurm-no-account", "--slurm-status-command", "squeue",
               "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2",
               "--slurm-keep-successful-logs", "--latency-wait", "5", "--retries", "0", *targets]
        proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        jobs = parse_jobs(subprocess.run(["scontrol", "-o", "show", "job"], env=cluster.env,
                                         capture_output=True, text=True).stdout)
        logs = cluster.logs()
    elapsed = time.monotonic() - start
    print(f"slurm test: bring-up + snakemake + teardown {elapsed:.1f} s")

    # Teardown stopped exactly the daemons it started.
    for name, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(), name

    assert proc.returncode == 0, (f"snakemake exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
                                  f"\n{logs}")
    for target in targets + ["results/demo/A0-seed0/best.pt", "reports/demo/table2.md"]:
        assert (project / target).is_file(), target

    # One sbatch per job; the plugin tags each with --comment rule_<name>[_wildcards_...].
    by_rule: dict[str, list[dict]] = {}
    for job in jobs:
        rule = re.match(r"rule_([a-z]+)", job.get("Comment", ""))
        assert rule, job
        by_rule.setdefault(rule.group(1), []).append(job)
    assert {r: len(j) for r, j in by_rule.items()} == {"prepare": 1, "align": 1, "train": 2, "evaluate": 2,
                                                      "report": 1}
    for rule, rule_jobs in by_rule.items():
        for job in rule_jobs:
            assert job["JobState"] == "COMPLETED", job
            gpu = job.get("TresPerJob", "")
            if rule in ("train", "evaluate"):
                assert gpu == "gres:gpu:1", (rule, job)  # --gpus=execution.nproc (1) from the rule's resource
            else:
                assert "gpu" not in gpu and "gpu" not in job.get("TresPerNode", ""), (rule, job)
    train = by_rule["train"][0]
    assert int(train["MinMemoryNode"].rstrip("MG")) > 0 and train["TimeLimit"] == "06:00:00", train  # profile

    # Inside the job step SLURM chose the GPU; cpsl took it as given rather than leasing one.
    # (the job's own log: each rule sends its command's output to logs/<dataset>/<stage>/..., issue 24)
    train_logs = "".join(p.read_text() for p in (project / "logs" / "demo" / "train").glob("*.log"))
    assert re.search(r"cpsl train: CUDA_VISIBLE_DEVICES=\d set by the scheduler", train_logs), train_logs[-3000:]
    assert not (project / ".cpsl" / "gpu-locks").exists()  # (.cpsl/engine.lock: the main Snakemake's project lock)
