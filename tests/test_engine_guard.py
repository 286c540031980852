"""Engines side by side (issue 16, item 7), without a real engine: cpsl.runtime.engine_guard's project lock between a
"Snakemake" (a process holding it exclusively) and stages (holding it shared), and the watchdog that stops a
trainer whose engine was SIGKILLed. The real engines are run in tests/test_e2e_workflows.py."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cpsl.runtime import engine_guard
from cpsl.runtime.engine_guard import ProjectBusy, hold_for_snakemake, stage_guard

SRC = str(Path(__file__).resolve().parents[1] / "src")

# argv: mode ("snakemake" | "stage"), project root
HOLDER = r"""
import sys, time
from cpsl.runtime import engine_guard
if sys.argv[1] == "snakemake":
    engine_guard.hold_for_snakemake(sys.argv[2])
    print("held", flush=True)
    time.sleep(600)
with engine_guard.stage_guard(sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""

# A stand-in for `cpsl train`: saves its "state" on SIGTERM, as the training loop does; argv: folder, watch (0/1)
TRAINER = r"""
import os, signal, sys, time
from pathlib import Path
from cpsl.runtime import engine_guard
folder = Path(sys.argv[1])
def saved(signum, frame):
    (folder / "state").write_text("saved")
    sys.exit(128 + signum)
signal.signal(signal.SIGTERM, saved)
if sys.argv[2] == "1":
    engine_guard.stop_when_engine_dies("trainer", poll_s=0.1)
(folder / "pid").write_text(str(os.getpid()))
while True:
    time.sleep(0.05)
"""

# A stand-in for Snakemake: a process whose argv[0] is "snakemake" that runs the trainer through a shell;
# argv: python, trainer code, folder, watch (its own sys.executable would resolve "snakemake" on PATH)
ENGINE = r"""
import subprocess, sys, time
python, code, folder, watch = sys.argv[1:5]
subprocess.Popen(["bash", "-c", f"{python} -c '{code}' {folder} {watch}; echo done"])
time.sleep(600)
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": SRC}


def _holder(mode: str, root: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, mode, str(root)], stdout=subprocess.PIPE, text=True,
                            env=_env())
    assert proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_stage_is_refused_while_a_snakemake_holds_the_project_naming_its_pid(tmp_path):
    first = _holder("snakemake", tmp_path)
    try:
        with pytest.raises(ProjectBusy) as err:
            with stage_guard(tmp_path):
                pass
        msg = str(err.value)
        assert f"busy: PID {first.pid} (" in msg and f"is running in this project ({tmp_path.resolve()})" in msg
        assert "wait for it to finish or stop it" in msg and "\n" not in msg
    finally:
        _kill(first)
    with stage_guard(tmp_path):  # the kernel released the dead holder's lock
        pass


def test_a_second_snakemake_is_refused_while_a_stage_runs_and_stages_share(tmp_path):
    stage = _holder("stage", tmp_path)
    try:
        with stage_guard(tmp_path):  # stages of other runs (DVC, by hand) share the project
            pass
        proc = subprocess.run([sys.executable, "-c", "import sys; from cpsl.runtime import engine_guard as g; "
                               "g.hold_for_snakemake(sys.argv[1])", str(tmp_path)], capture_output=True, text=True,
                              env=_env())
        assert proc.returncode != 0 and f"busy: PID {stage.pid} (" in proc.stderr
    finally:
        _kill(stage)
    hold_for_snakemake(tmp_path)  # free again; and a second parse in the same process is no conflict
    hold_for_snakemake(tmp_path)
    os.close(engine_guard._HELD.pop(tmp_path.resolve()))


def _run_engine(tmp_path: Path, watch: bool) -> tuple[subprocess.Popen, int]:
    engine = subprocess.Popen(["bash", "-c", f'exec -a snakemake {sys.executable} -c "$0" "$@"', ENGINE,
                               sys.executable, TRAINER, str(tmp_path), "1" if watch else "0"], env=_env(),
                              start_new_session=True, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (tmp_path / "pid").is_file():
        assert time.monotonic() < deadline and engine.poll() is None, "the trainer did not start"
        time.sleep(0.05)
    time.sleep(0.3)
    return engine, int((tmp_path / "pid").read_text())


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        stat = engine_guard._stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_a_trainer_stops_and_saves_when_its_engine_is_sigkilled(tmp_path):
    engine, trainer = _run_engine(tmp_path, watch=True)
    found = engine_guard.engine_ancestor(trainer)
    assert found is not None and found.pid == engine.pid and found.engine == "snakemake"
    assert not _gone(trainer, 0.5)  # supervised: it runs while its engine lives
    _kill(engine)
    assert _gone(trainer, 10)
    assert (tmp_path / "state").read_text() == "saved"  # stopped as on SIGTERM: state saved


def test_without_the_watchdog_the_trainer_would_run_on_unsupervised(tmp_path):
    engine, trainer = _run_engine(tmp_path, watch=False)
    _kill(engine)
    try:
        assert not _gone(trainer, 1.5) and not (tmp_path / "state").exists()
    finally:
        os.kill(trainer, signal.SIGKILL)


def test_engine_names_and_short_commands():
    assert engine_guard._engine_of(["/usr/bin/python3", "/venv/bin/snakemake", "--cores", "2"]) == "snakemake"
    assert engine_guard._engine_of(["python", "-m", "snakemake", "--target-jobs", "x"]) == "snakemake"
    assert engine_guard._engine_of(["/venv/bin/python3.11", "/venv/bin/dvc", "repro"]) == "dvc"
    assert engine_guard._engine_of(["/venv/bin/python3", "/venv/bin/cpsl", "train"]) is None
    assert engine_guard._describe(["/venv/bin/python3", "/venv/bin/cpsl", "train", "--ablation", "A6", "--seed",
                                   "0", "--data", "x"]) == "cpsl train --ablation A6 --seed 0"
