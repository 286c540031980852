"""Fault messages that name the real cause (issue 21, item 7): a write stopped by the file-size limit (`ulimit -f`)
or a full disk, during align's HDF5 write, a checkpoint/state save or a report write, is one line naming the file
and the cause, exit 1, no temporary left; evaluate's remedy for a read-only run folder names a flag evaluate has;
the damaged-state warning keeps torch's reason; `snakemake -n` while a workflow runs is one line naming the
holder of .cpsl/engine.lock."""
from __future__ import annotations

import argparse
import builtins
import errno
import os
import re
import resource
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_align import make_videos, write_raw
from project_copy import copy_project
from test_report_stage import _labels, make_run
from train_helpers import make_cache, small_params, tiny_text_model, write_params

from cpsl import cli, errors
from cpsl.errors import PipelineError
from cpsl.formats import run_folder
from cpsl.runtime import io_utils
from cpsl.train import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]
ULIMIT = "file too large for this process's file-size limit (`ulimit -f`: "
Usage = namedtuple("Usage", "total used free")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}


def run_limited(argv: list[str], limit_bytes: int) -> subprocess.CompletedProcess:
    """`cpsl <argv>` in a child process whose file-size limit (`ulimit -f`) is ``limit_bytes``. subprocess resets
    SIGXFSZ to its default (terminate) in the child: the exit code shows what the CLI does about it."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "cpsl.cli", *argv], preexec_fn=limit, capture_output=True,
                          text=True, env=_env(), timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess, stage: str) -> str:
    err = proc.stderr.strip().splitlines()
    errors_only = [line for line in err if line.startswith(f"cpsl {stage}: error: ")]
    assert proc.returncode == 1, proc.stderr  # not -SIGXFSZ (killed), not a traceback's exit
    assert "Traceback" not in proc.stderr and len(errors_only) == 1 and err[-1] == errors_only[0], proc.stderr
    return errors_only[0]


def _temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*.tmp"))


# ------------------------------------------------------------------- (1) file-size limit and full disk
def test_align_stopped_by_the_file_size_limit_names_the_cache_and_the_limit(tmp_path):
    raw = write_raw(tmp_path / "raw", make_videos(6))
    out = tmp_path / "processed" / "demo.h5"
    proc = run_limited(["align", "--params", str(REPO / "params.yaml"), "--set", "data.max_seq_len=16",
                        "--raw", str(raw), "--out", str(out)], 16 * 1024)
    line = _one_line_error(proc, "align")
    assert f"{out}: could not be written: {ULIMIT}16 kB), not a full disk" in line, line
    assert "raise the limit (`ulimit -f unlimited`)" in line and "errno" not in line
    assert not out.exists() and _temporaries(out.parent) == []


def test_prepare_stopped_by_the_file_size_limit_names_the_raw_file_and_the_limit(tmp_path):
    out = tmp_path / "raw"
    proc = run_limited(["prepare", "--params", str(REPO / "params.yaml"), "--set", "demo.videos=6",
                        "--out", str(out)], 16 * 1024)
    line = _one_line_error(proc, "prepare")  # was: exit -11 (SIGSEGV) after HDF5's tracebacks
    assert re.search(rf"\.csd: could not be written: {re.escape(ULIMIT)}16 kB\), not a full disk", line), line
    assert not out.exists() or _temporaries(out) == [] and not list(out.glob(".demo-build-*"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    text = tiny_text_model(tmp / "text")
    cache = make_cache(tmp / "cache.h5", n_train=8, n_valid=4, n_test=4, seq_len=8)
    params_file = write_params(tmp / "params.yaml", small_params(text, **{"train.epochs": 1}))
    return tmp, cache, params_file


def test_a_checkpoint_save_stopped_by_the_file_size_limit_names_the_limit_not_free_space(world, tmp_path):
    tmp, cache, params_file = world
    run = tmp_path / "A6-seed0"
    # the tiny model's best.pt is ~4 MB, its state ~12 MB: 1 MB stops the first checkpoint
    proc = run_limited(["train", "--params", str(params_file), "--seed", "0", "--ablation", "A6",
                        "--data", str(cache), "--out", str(run)], 1_000_000)
    line = _one_line_error(proc, "train")
    assert f"{run / 'best.pt'}: could not be written: {ULIMIT}1.0 MB), not a full disk" in line, line
    assert "MB free" not in line and "no space left" not in line
    assert not (run / "best.pt").exists() and _temporaries(run) == []


def test_a_report_write_stopped_by_the_file_size_limit_names_the_file(tmp_path):
    import yaml

    from cpsl.config.schema import load_params

    params = load_params(REPO / "params.yaml")
    params["ablations"], params["train"]["seeds"] = ["A6"], [0]
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    rng = np.random.default_rng(0)
    make_run(tmp_path / "results", "A6", 0, 0.3, {"valid": _labels(rng, 12), "test": _labels(rng, 18)})
    out = tmp_path / "reports"
    proc = run_limited(["report", "--params", str(params_file), "--results", str(tmp_path / "results"),
                        "--out", str(out)], 1024)
    line = _one_line_error(proc, "report")
    assert re.search(rf"{re.escape(str(out))}/[\w.]+: could not be written: {re.escape(ULIMIT)}", line), line
    assert _temporaries(out) == []


def _to_dev_full(monkeypatch, module) -> None:
    """The module's writes go to /dev/full, which answers every write with ENOSPC, as a full disk does."""
    monkeypatch.setattr(module, "open", lambda _p, mode: builtins.open("/dev/full", mode), raising=False)


@pytest.mark.parametrize("writer", ["align cache", "checkpoint"])
def test_a_full_disk_is_named_with_the_space_left(world, tmp_path, monkeypatch, writer):
    from cpsl.formats import cache as cache_module

    _, cache, _ = world
    monkeypatch.setattr(errors.shutil, "disk_usage", lambda _p: Usage(10**9, 10**9 - 2_500_000, 2_500_000))
    final = tmp_path / ("demo.h5" if writer == "align cache" else "best.pt")
    with pytest.raises(PipelineError) as err:
        if writer == "align cache":
            splits = {split: cache_module.read_split(cache, split) for split in cache_module.SPLITS}
            attrs = cache_module.read_attrs(cache)
            _to_dev_full(monkeypatch, io_utils)  # hdf5_atomic's writer
            cache_module.write_cache(final, splits, attrs)
        else:
            _to_dev_full(monkeypatch, run_folder)
            run_folder.save_pt(final, {"w": torch.zeros(10_000)})
    assert str(err.value) == (f"{final}: could not be written: no space left on device (2.5 MB free there "
                              f"now); free some space and rerun (completed outputs are kept)")
    assert list(tmp_path.iterdir()) == []


def test_an_errno_is_found_wherever_the_library_put_it():
    try:
        try:
            raise OSError(errno.EFBIG, "File too large")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 640 vs 534") from None
    except RuntimeError as exc:
        assert errors.fault_errno(exc) == errno.EFBIG  # the context of torch's RuntimeError
    hdf5 = RuntimeError("Can't decrement id ref count (unable to extend file properly, errno = 28, error message = "
                        "'No space left on device')")
    assert errors.fault_errno(hdf5) == errno.ENOSPC
    assert errors.write_fault("x", ValueError("no errno here")) is None


# ------------------------------------------------------------------- (2) the remedy names the stage's own flags
@pytest.mark.parametrize("stage", ["prepare", "align", "train", "evaluate", "report"])
def test_each_stages_write_elsewhere_hint_names_only_flags_it_has(stage):
    hint = cli.write_elsewhere(stage)
    named = set(re.findall(r"--[a-z][a-z-]*", hint))
    assert named and named <= cli.stage_flags(stage), (stage, hint)


def test_evaluate_on_a_read_only_run_folder_suggests_a_real_remedy(world, tmp_path, monkeypatch, capsys):
    tmp, cache, params_file = world
    run = tmp_path / "A6-seed0"
    run.mkdir()
    real_open = os.open

    def read_only(path, flags, *a, **k):
        if str(path).startswith(str(run)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", read_only)
    code = cli.main(["evaluate", "--params", str(params_file), "--run", str(run), "--data", str(cache)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"cpsl evaluate: error: {run}/") and "Read-only file system" in err
    assert "copy the run folder somewhere writable and pass the copy as --run" in err and "--out" not in err


# ------------------------------------------------------------------- (3) the damaged-state warning keeps the reason
def _foreign(path: Path) -> str:
    torch.save({"fingerprint": argparse.Namespace()}, path)  # a global weights_only refuses
    return "Unsupported global: GLOBAL argparse.Namespace was not an allowed global by default"


def _half(path: Path) -> str:
    torch.save({"w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:2000])
    return "PytorchStreamReader failed reading zip archive: failed finding central directory"


@pytest.mark.parametrize("damage", [_foreign, _half], ids=["foreign-global", "truncated"])
def test_the_damaged_state_warning_keeps_torchs_reason_on_one_line(tmp_path, capsys, damage):
    path = tmp_path / "state" / "last.pt"
    path.parent.mkdir()
    reason = damage(path)
    assert ckpt.load_state(path) is None
    err = capsys.readouterr().err
    assert err == (f"cpsl train: warning: {path} is unreadable ({reason}); discarding it and starting this run "
                   f"from scratch\n")


# ------------------------------------------------------------------- (4) snakemake -n while a workflow runs
# a stand-in for a running Snakemake: a script named snakemake holding the project lock as the Snakefile does
HOLDER = """import sys, time
from cpsl.runtime.engine_guard import hold_for_snakemake
hold_for_snakemake(".")
print("held", flush=True)
time.sleep(600)
"""


def test_a_dry_run_while_a_workflow_runs_is_one_line_naming_the_lock_holder(tmp_path):
    project = copy_project(tmp_path / "project", ["params.yaml", "Snakefile", "workflow"])
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "snakemake").write_text(HOLDER)
    holder = subprocess.Popen([sys.executable, str(tmp_path / "bin" / "snakemake"), "--cores", "1"], cwd=project,
                              stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-n"], cwd=project, capture_output=True,
                              text=True, env=_env(), timeout=120)
    finally:
        holder.kill()
        holder.wait()
    err = proc.stderr.strip()
    assert proc.returncode == 1 and len(err.splitlines()) == 1, err
    assert err == (f"snakemake: error: busy: PID {holder.pid} (snakemake --cores 1) is running in this "
                   f"project ({project.resolve()}) and holds .cpsl/engine.lock; wait for it to finish or stop it, "
                   f"then rerun")
