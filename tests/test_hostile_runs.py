"""Hostile run folders and caches (issue 10, cases 3-5, 8, 9): a damaged state never keeps a run stuck, a
second writer is refused naming the holder's PID, SIGKILL temporaries are cleaned, damaged caches are refused
naming split and segment before anything is written, checkpoints name the text model as configured; (issue 16,
item 2) a truncated or symlinked best.pt is trained again, and evaluate's error says to rerun train."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from train_helpers import make_cache, small_params, tiny_text_model, write_params

from cpsl.cli import main
from cpsl.errors import PipelineError
from cpsl.formats import run_folder
from cpsl.formats.cache import CacheError, read_split
from cpsl.runtime import io_utils
from cpsl.runtime.runlock import LOCK_NAME, RunFolderBusy, run_folder_lock
from cpsl.stages.train import run_train
from cpsl.train import checkpoint as ckpt

ONE_EPOCH = {"train.epochs": 1, "train.batch_size": 8}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile_runs")
    text = tiny_text_model(tmp / "text")
    cache = make_cache(tmp / "cache.h5", n_train=8, n_valid=4, n_test=4, seq_len=8)
    return tmp, text, cache


def _copy_cache(src: Path, dst: Path, edit) -> Path:
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as h5:
        edit(h5)
    return dst


# ---------------------------------------------------------------- case 3: damaged state/last.pt; case 8: temporaries
@pytest.mark.parametrize("state_bytes", [b"", b"PK\x03\x04 truncated zip", None], ids=["empty", "truncated", "half"])
def test_damaged_state_is_discarded_and_sigkill_temporaries_are_removed(world, tmp_path, capsys, state_bytes):
    tmp, text, cache = world
    params = small_params(text, **ONE_EPOCH)
    run = tmp_path / "run"
    (run / "state").mkdir(parents=True)
    if state_bytes is None:  # a real state cut in half (e.g. copied while the disk filled up)
        assert run_train(params, seed=0, data_path=cache, out_dir=tmp_path / "first") == 0
        full = (tmp_path / "first" / "state" / "last.pt").read_bytes()
        state_bytes = full[: len(full) // 2]
    (run / "state" / "last.pt").write_bytes(state_bytes)
    # what a SIGKILL during the atomic writes leaves behind, and files that are not ours
    stale = [run / ".best.pt.k1l2m3n4.pt.tmp", run / "state" / ".last.pt.abcd1234.pt.tmp",
             run / ".history.csv.zz99yy88.csv.tmp", run / ".train_summary.json.q1w2e3r4.tmp"]
    for path in stale:
        path.write_bytes(b"x" * 100)
    foreign = [run / "notes.tmp", run / ".other.pt.12345678.tmp", run / "state" / "mine.txt"]
    for path in foreign:
        path.write_text("keep me")

    assert run_train(params, seed=0, data_path=cache, out_dir=run) == 0
    err = capsys.readouterr().err
    assert "state/last.pt is unreadable" in err and "starting this run from scratch" in err
    assert (run / "train_summary.json").is_file() and (run / "best.pt").is_file()
    assert ckpt.load_state(run / "state" / "last.pt")["epoch"] == 1  # a good state replaced the damaged one
    assert not [p for p in stale if p.exists()]
    assert all(p.read_text() == "keep me" for p in foreign)


# ---------------------------------------------------------------- case 5: one writer per run folder
_HOLDER = """
import sys, time
from cpsl.runtime.runlock import run_folder_lock
with run_folder_lock(sys.argv[1], "train"):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_second_writer_is_refused_naming_the_pid_and_a_dead_holder_does_not_block(world, tmp_path, capsys):
    tmp, text, cache = world
    params = small_params(text, **ONE_EPOCH)
    params_file = write_params(tmp_path / "params.yaml", params)
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        for stage in (["train", "--seed", "0", "--data", str(cache)], ["evaluate", "--data", str(cache)]):
            flag = "--out" if stage[0] == "train" else "--run"
            code = main([*stage, flag, str(run), "--params", str(params_file)])
            err = capsys.readouterr().err
            assert code == 1, err
            assert f"in use by PID {holder.pid} (cpsl train)" in err and len(err.strip().splitlines()) == 1
        assert not (run / "best.pt").exists() and not (run / "dvclive").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder died without cleaning up: its lock file stays, but the kernel released the lock
    assert (run / LOCK_NAME).is_file()
    assert main(["train", "--seed", "0", "--data", str(cache), "--out", str(run), "--params", str(params_file)]) == 0
    assert (run / "train_summary.json").is_file()


def test_lock_is_exclusive_within_one_process_too(tmp_path):
    with run_folder_lock(tmp_path / "r", "train"):
        with pytest.raises(RunFolderBusy, match=rf"in use by PID {os.getpid()}"):
            with run_folder_lock(tmp_path / "r", "evaluate"):
                pass
    with run_folder_lock(tmp_path / "r", "evaluate"):  # released on exit
        pass


# ---------------------------------------------------------------- case 3/4: damaged caches, refused before any write
def _oov(h5):
    ids = h5["train/input_ids"][()]
    ids[2, 1] = 30522 + 7
    h5["train/input_ids"][...] = ids


def _dim_attr(h5):
    h5.attrs["acoustic_dim"] = 9


@pytest.mark.parametrize("edit, fragment", [
    (_oov, "split 'train' has token id 30529 but the text model"),
    (_dim_attr, "key 'acoustic' has width 5 but the attribute 'acoustic_dim' says 9"),
], ids=["out-of-vocabulary", "acoustic_dim"])
def test_inconsistent_cache_fails_before_the_run_folder_is_written(world, tmp_path, edit, fragment):
    tmp, text, cache = world
    bad = _copy_cache(cache, tmp_path / "bad.h5", edit)
    run = tmp_path / "run"
    with pytest.raises(CacheError, match=fragment) as err:
        run_train(small_params(text, **ONE_EPOCH), seed=0, data_path=bad, out_dir=run)
    assert "train_" in str(err.value) or "acoustic_dim" in str(err.value)
    assert not (run / "dvclive").exists() and not (run / "best.pt").exists() and not (run / "state").exists()


def _set(key, row, value, col=None):
    def edit(h5):
        arr = h5[key][()]
        if col is None:
            arr[row] = value
        else:
            arr[row, col] = value
        h5[key][...] = arr
    return edit


@pytest.mark.parametrize("split, edit, fragment", [
    ("train", _set("train/label", 3, 100.0), "label(s) outside [-3.0, 3.0], first segment 'train_3' (100.0)"),
    ("train", _set("train/label", 1, np.nan), "non-finite label(s), first segment 'train_1'"),
    ("test", _set("test/label", 2, np.nan), "split 'test' has 1 non-finite label(s), first segment 'test_2'"),
    ("valid", _set("valid/attention_mask", 0, 0), "all-zero attention mask (no tokens), first 'valid_0'"),
    ("train", _set("train/attention_mask", 0, 5, 0), "'attention_mask' holds values other than 0/1"),
    ("train", _set("train/input_ids", 1, -4, 0), "negative token ids, first segment 'train_1'"),
    ("test", _set("test/visual", 3, np.inf), "key 'visual' has non-finite values in 1 segment(s), first 'test_3'"),
])
def test_cache_contents_are_checked_naming_file_split_and_segment(world, tmp_path, split, edit, fragment):
    _, _, cache = world
    bad = _copy_cache(cache, tmp_path / "bad.h5", edit)
    with pytest.raises(CacheError) as err:
        read_split(bad, split)
    assert fragment in str(err.value) and str(bad) in str(err.value)


def test_a_bad_training_label_stops_train_before_any_epoch(world, tmp_path):
    tmp, text, cache = world
    bad = _copy_cache(cache, tmp_path / "bad.h5", _set("train/label", 0, 100.0))
    with pytest.raises(CacheError, match="outside"):
        run_train(small_params(text, **ONE_EPOCH), seed=0, data_path=bad, out_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "dvclive").exists()


# ---------------------------------------------------------------- case 3: read-only folder, full disk
Usage = namedtuple("Usage", "total used free")


def test_full_disk_is_detected_before_the_first_epoch(world, tmp_path, monkeypatch):
    tmp, text, cache = world
    monkeypatch.setattr(io_utils.shutil, "disk_usage", lambda _p: Usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(PipelineError, match=r"0 MB free, about \d+ MB needed for a checkpoint and a training state"):
        run_train(small_params(text, **ONE_EPOCH), seed=0, data_path=cache, out_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "dvclive").exists() and not (tmp_path / "run" / "state").exists()


def test_a_failed_checkpoint_write_is_one_clear_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    run_folder.save_pt(tmp_path / "best.pt", {"v": torch.zeros(1)})

    def full(obj, f, *a, **k):  # a failed write whose errno torch did not keep
        f.write(b"partial")
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(PipelineError, match=r"best\.pt: could not be written \(basic_ios::clear.*check the free space "
                                            r"and the file-size limit"):
        run_folder.save_pt(tmp_path / "best.pt", {"v": torch.ones(1)})
    assert run_folder.load_pt(tmp_path / "best.pt")["v"].item() == 0.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]  # no temporary left


@pytest.mark.parametrize("err_no, fragment", [
    (errno.EROFS, "read-only file system; write the outputs elsewhere (--out) or remount"),
    (errno.EACCES, "permission denied; fix the folder's permissions"),
    (errno.ENOSPC, "no space left on device; free some space and rerun"),
])
def test_unwritable_output_is_one_line_exit_1(tmp_path, monkeypatch, capsys, err_no, fragment):
    from cpsl.config.schema import load_params

    params_file = write_params(tmp_path / "params.yaml", load_params(Path(__file__).parents[1] / "params.yaml"))

    def refuse(*a, **k):
        raise OSError(err_no, os.strerror(err_no), str(tmp_path / "data" / "raw" / "demo"))

    monkeypatch.setattr(io_utils.tempfile, "mkstemp", refuse)
    monkeypatch.setattr("tempfile.mkdtemp", refuse)
    code = main(["prepare", "--params", str(params_file), "--set", "demo.videos=6"])
    err = capsys.readouterr().err
    assert code == 1
    assert fragment in err.lower() and "data/raw/demo" in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_check_free_space_names_a_read_only_folder(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))

    monkeypatch.setattr(io_utils.tempfile, "mkstemp", refuse)
    with pytest.raises(PipelineError, match="cannot write here: .*Read-only file system; write the outputs elsewhere"):
        io_utils.check_free_space(tmp_path, 0, "x")


# ---------------------------------------------------------------- case 9: portable checkpoints
def test_checkpoint_names_the_text_model_as_configured_and_evaluate_resolves_it(world, tmp_path, monkeypatch, capsys):
    tmp, text, cache = world
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    os.symlink(text, project / "models" / "tiny")
    params = small_params(str(project / "models" / "tiny"), **ONE_EPOCH)
    params["text"]["model"] = "models/tiny"  # relative to the project (the params file's folder)
    params_file = write_params(project / "params.yaml", params)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run = project / "results" / "r"
    assert main(["train", "--params", str(params_file), "--seed", "0", "--data", str(cache), "--out", str(run)]) == 0
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["meta"]["text_model"] == "models/tiny"
    assert "models/tiny" == __import__("json").loads((run / "train_summary.json").read_text())["text_model"]
    # the project moves (another machine / a new venv): evaluate finds the model relative to the project
    moved = tmp_path / "moved"
    project.rename(moved)
    assert main(["evaluate", "--params", str(moved / "params.yaml"), "--run", str(moved / "results" / "r"),
                 "--data", str(cache)]) == 0, capsys.readouterr().err
    assert (moved / "results" / "r" / "metrics.json").is_file()


def test_an_absolute_model_folder_that_is_gone_is_one_clear_error():
    from cpsl.config.text_model import resolve_model_path

    with pytest.raises(PipelineError, match="text model folder /no/such/venv/model does not exist; set text.model"):
        resolve_model_path("/no/such/venv/model")


# ------------------------------------------------------- issue 16, item 2: a damaged best.pt is not a finished run
def _truncate(best: Path, tmp_path: Path) -> str:
    best.write_bytes(best.read_bytes()[:1000])
    return "cannot be loaded with weights_only=True"


def _link_to_text(best: Path, tmp_path: Path) -> str:
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    best.unlink()
    best.symlink_to(tmp_path / "notes.txt")
    return "is a symbolic link (to "


@pytest.mark.parametrize("damage", [_truncate, _link_to_text], ids=["truncated", "symlink"])
def test_a_damaged_checkpoint_is_retrained_and_evaluate_says_to_rerun_train(world, tmp_path, capsys, damage):
    tmp, text, cache = world
    params_file = write_params(tmp_path / "params.yaml", small_params(text, **ONE_EPOCH))
    run = tmp_path / "A6-seed0"
    train = ["train", "--seed", "0", "--ablation", "A6", "--data", str(cache), "--out", str(run),
             "--params", str(params_file)]
    assert main(train) == 0
    fingerprint = json.loads((run / "train_summary.json").read_text())["fingerprint"]
    why = damage(run / "best.pt", tmp_path)
    capsys.readouterr()

    # evaluate: one line, naming the file and saying to rerun train
    assert main(["evaluate", "--run", str(run), "--data", str(cache), "--params", str(params_file)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"cpsl evaluate: error: {run / 'best.pt'}")
    assert "rerun `cpsl train --ablation A6 --seed 0`" in err

    # train: not "already trained", it says why and trains the run again
    assert main(train) == 0
    err = capsys.readouterr().err
    assert "nothing to do" not in err and why in err and "training this run again" in err
    assert not (run / "best.pt").is_symlink() and run_folder.best_problem(run, fingerprint) is None
    if damage is _link_to_text:  # the link was replaced; its target is left alone
        assert (tmp_path / "notes.txt").read_text() == "not a checkpoint\n"
    assert main(["evaluate", "--run", str(run), "--data", str(cache), "--params", str(params_file)]) == 0
    assert main(train) == 0 and "nothing to do" in capsys.readouterr().err  # and now it is finished
