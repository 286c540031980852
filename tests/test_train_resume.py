"""Kill a training run with SIGTERM mid-epoch, resume it, and get bit-identical weights (CPU).

The interrupted run is a real `cpsl train` subprocess; the test waits until the first epoch's state/last.pt
exists and sends SIGTERM right away, so the signal lands early in epoch 1 (which has 8 steps): the run
saves state at the end of the current step and exits with 128 + SIGTERM. Rerunning the same command continues
the run; its final weights, best checkpoint and history equal those of an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch
from train_helpers import REPO, assert_same_tensors, make_cache, small_params, tiny_text_model, write_params

from cpsl.formats.run_folder import read_history
from cpsl.stages.train import run_train

SETTINGS = {"train.epochs": 3, "train.batch_size": 4, "ablations": ["A6"]}  # 8 steps per epoch, AME+GE noise on


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_sigterm_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path):
    text = tiny_text_model(tmp_path / "text")
    cache = make_cache(tmp_path / "cache.h5", n_train=32, n_valid=8)
    params = small_params(text, **SETTINGS)
    params_file = write_params(tmp_path / "params.yaml", params)

    # uninterrupted reference, in this process
    assert run_train(params, seed=0, data_path=cache, out_dir=tmp_path / "ref") == 0

    # interrupted run: a real `cpsl train` process, SIGTERM once the first epoch's state exists
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "cpsl.cli", "train", "--params", str(params_file), "--seed", "0",
           "--data", str(cache), "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "state" / "last.pt").is_file():
        assert proc.poll() is None, f"training ended before it could be interrupted:\n{proc.stderr.read()}"
        assert time.time() < deadline, "no state/last.pt after 120 s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err

    state = _load(run / "state" / "last.pt")
    assert state["epoch"] == 1 and 0 < state["step_in_epoch"] < 8, (state["epoch"], state["step_in_epoch"])
    assert state["global_step"] == 8 + state["step_in_epoch"]
    assert "interrupted" in err and not (run / "train_summary.json").exists()

    # resume to completion with the same command (here in-process: same code path after the CLI)
    assert run_train(params, seed=0, data_path=cache, out_dir=run) == 0

    assert_same_tensors(_load(ref := tmp_path / "ref" / "state" / "last.pt")["model"],
                        _load(run / "state" / "last.pt")["model"])
    best_ref, best_run = _load(tmp_path / "ref" / "best.pt"), _load(run / "best.pt")
    assert best_ref["epoch"] == best_run["epoch"] and best_ref["valid"] == best_run["valid"]
    assert_same_tensors(best_ref["model"], best_run["model"])
    assert read_history(tmp_path / "ref" / "history.csv") == read_history(run / "history.csv")
    assert _load(ref)["global_step"] == 24


def test_finished_run_is_not_retrained_but_changed_params_are(tmp_path, capfd):
    text = tiny_text_model(tmp_path / "text")
    cache = make_cache(tmp_path / "cache.h5", n_train=8, n_valid=8)
    params = small_params(text, **{"train.epochs": 1})
    run = tmp_path / "run"
    assert run_train(params, seed=0, data_path=cache, out_dir=run) == 0
    stamp = (run / "best.pt").stat().st_mtime_ns

    assert run_train(params, seed=0, data_path=cache, out_dir=run) == 0
    assert (run / "best.pt").stat().st_mtime_ns == stamp
    assert "already trained" in capfd.readouterr().err
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["params"]["execution"] == params["execution"]  # how the run was executed is on record

    # how a run is executed is not part of its identity (issue 17): no retraining for another step mode or
    # validation chunk size
    other_execution = small_params(text, **{"train.epochs": 1, "execution.step": "eager",
                                            "execution.eval_batch_size": 3})
    assert run_train(other_execution, seed=0, data_path=cache, out_dir=run) == 0
    assert (run / "best.pt").stat().st_mtime_ns == stamp
    assert "already trained" in capfd.readouterr().err

    changed = small_params(text, **{"train.epochs": 1, "cp.eta": 0.3})
    assert run_train(changed, seed=0, data_path=cache, out_dir=run) == 0
    assert (run / "best.pt").stat().st_mtime_ns != stamp
    assert _load(run / "best.pt")["meta"]["params"]["cp"]["eta"] == 0.3
