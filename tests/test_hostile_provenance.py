"""A checkpoint or metrics.json is only ever evaluated or reported under the params it was produced with (issue 21,
item 4): a run trained with `--set cp.eta=0.3` is refused by evaluate and report under cp.eta 0.5, naming the key;
a best.pt copied in from another params set is refused; a retrain leaves no old metrics.json to be reported; an
in-place edit of the cache that keeps its size, attributes and mtime makes train retrain, not "nothing to do"."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from train_helpers import make_cache, small_params, tiny_text_model, write_params

from cpsl.cli import main
from cpsl.formats import run_folder
from cpsl.formats.cache import read_attrs

SETTINGS = {"train.epochs": 1, "train.batch_size": 8, "ablations": ["A6"], "train.seeds": [0]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A project (params.yaml with cp.eta 0.5) with a tiny text model and cache."""
    tmp = tmp_path_factory.mktemp("provenance")
    text = tiny_text_model(tmp / "text")
    cache = make_cache(tmp / "cache.h5", n_train=8, n_valid=4, n_test=4, seq_len=8)
    params = small_params(text, **SETTINGS)
    assert params["cp"]["eta"] == 0.5
    return tmp, write_params(tmp / "params.yaml", params), cache


def _cli(capsys, params_file: Path, *argv: str) -> tuple[int, str]:
    code = main([argv[0], "--params", str(params_file), *argv[1:]])
    return code, capsys.readouterr().err


def _train(capsys, params_file, cache, run, *overrides):
    sets = [a for item in overrides for a in ("--set", item)]
    return _cli(capsys, params_file, "train", "--seed", run.name.split("seed")[-1], "--ablation", "A6",
                "--data", str(cache), "--out", str(run), *sets)


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_run_trained_with_other_params_is_refused_by_evaluate_and_report_naming_the_key(world, tmp_path, capsys):
    tmp, params_file, cache = world
    results = tmp_path / "results"
    run = results / "A6-seed0"
    assert _train(capsys, params_file, cache, run, "cp.eta=0.3")[0] == 0  # by hand, into the engine's folder

    code, err = _cli(capsys, params_file, "evaluate", "--run", str(run), "--data", str(cache))
    line = _one_line(err)
    assert code == 1 and line.startswith(f"cpsl evaluate: error: {run / 'best.pt'}: "), line
    assert "cp.eta: run 0.3, params 0.5" in line and "cpsl train --ablation A6 --seed 0" in line, line
    assert not (run / "metrics.json").exists() and not (run / "predictions.csv").exists()

    # under the params it was trained with, evaluate accepts it and metrics.json records them ...
    code, err = _cli(capsys, params_file, "evaluate", "--run", str(run), "--data", str(cache), "--set", "cp.eta=0.3")
    assert code == 0, err
    record = run_folder.read_metrics(run)["run"]
    assert record["identity"]["params"]["cp.eta"] == 0.3
    assert record["fingerprint"] == run_folder.read_summary(run)["fingerprint"]
    # ... so the report under params.yaml (cp.eta 0.5) refuses it, naming the file and the key
    code, err = _cli(capsys, params_file, "report", "--results", str(results), "--out", str(tmp_path / "rep"))
    line = _one_line(err)
    assert code == 1 and line.startswith(f"cpsl report: error: {run / 'metrics.json'}: "), line
    assert "cp.eta: run 0.3, params 0.5" in line, line
    assert not (tmp_path / "rep" / "summary.json").exists()
    # and reports it under the params it was trained with
    code, err = _cli(capsys, params_file, "report", "--results", str(results), "--out", str(tmp_path / "rep"),
                     "--set", "cp.eta=0.3")
    assert code == 0, err


def test_a_best_pt_copied_from_another_params_set_is_refused(world, tmp_path, capsys):
    tmp, params_file, cache = world
    elsewhere = tmp_path / "other-project" / "A6-seed1"
    assert _train(capsys, params_file, cache, elsewhere, "train.lr=0.0005")[0] == 0
    run = tmp_path / "results" / "A6-seed0"
    run.mkdir(parents=True)
    shutil.copy2(elsewhere / "best.pt", run / "best.pt")

    code, err = _cli(capsys, params_file, "evaluate", "--run", str(run), "--data", str(cache))
    line = _one_line(err)
    assert code == 1 and f"{run / 'best.pt'}: does not belong to the configured run" in line, line
    assert "train.lr: run 0.0005, params 0.001" in line and "seed: run 1, configured 0" in line, line
    assert not (run / "metrics.json").exists()
    # a checkpoint that records no identity at all (made by hand, or by an older cpsl) is refused too
    import torch

    best = torch.load(elsewhere / "best.pt", weights_only=True)
    del best["meta"]["identity"]
    torch.save(best, run / "best.pt")
    code, err = _cli(capsys, params_file, "evaluate", "--run", str(run), "--data", str(cache))
    assert code == 1 and "records no run identity" in _one_line(err), err


def test_a_retrain_leaves_no_old_metrics_json_to_be_reported(world, tmp_path, capsys):
    tmp, params_file, cache = world
    results = tmp_path / "results"
    run = results / "A6-seed0"
    assert _train(capsys, params_file, cache, run)[0] == 0
    assert _cli(capsys, params_file, "evaluate", "--run", str(run), "--data", str(cache))[0] == 0
    old_metrics = (run / "metrics.json").read_bytes()

    code, err = _train(capsys, params_file, cache, run, "cp.eta=0.3")  # a retrain into the same folder
    assert code == 0, err
    assert "removed metrics.json, predictions.csv of the earlier checkpoint" in err, err
    assert not (run / "metrics.json").exists() and not (run / "predictions.csv").exists()
    code, err = _cli(capsys, params_file, "report", "--results", str(results), "--out", str(tmp_path / "rep"))
    assert code == 1 and "no run folder holds metrics.json" in err.strip().splitlines()[-1], err

    # the old metrics.json put back by hand (it matches params.yaml, but not the training in the folder)
    (run / "metrics.json").write_bytes(old_metrics)
    code, err = _cli(capsys, params_file, "report", "--results", str(results), "--out", str(tmp_path / "rep"))
    line = _one_line(err)
    assert code == 1 and f"{run / 'metrics.json'}: evaluated another training of this run" in line, line
    assert not (tmp_path / "rep" / "summary.json").exists()


def test_an_in_place_cache_edit_keeping_size_attributes_and_mtime_makes_train_retrain(world, tmp_path, capsys):
    tmp, params_file, _ = world
    cache = tmp_path / "cache.h5"
    shutil.copy2(world[2], cache)
    run = tmp_path / "results" / "A6-seed0"
    assert _train(capsys, params_file, cache, run)[0] == 0
    before = run_folder.read_summary(run)["fingerprint"]
    assert "nothing to do" in _train(capsys, params_file, cache, run)[1]  # unchanged: not retrained

    st, attrs = cache.stat(), read_attrs(cache)
    with h5py.File(cache, "r+") as h5:  # one label changed in place: same dtype, same size
        label = h5["train"]["label"][()]
        h5["train"]["label"][0] = np.float32(-label[0] if label[0] != 0 else 1.0)
    os.utime(cache, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (cache.stat().st_size, cache.stat().st_mtime_ns, read_attrs(cache)) == (st.st_size, st.st_mtime_ns, attrs)

    # the checkpoint of the old content is not evaluated on the new one ...
    code, err = _cli(capsys, params_file, "evaluate", "--run", str(run), "--data", str(cache))
    assert code == 1 and "cache: its content changed since training" in _one_line(err), err
    # ... and train does not take the run for done
    code, err = _train(capsys, params_file, cache, run)
    assert code == 0 and "nothing to do" not in err, err
    assert run_folder.read_summary(run)["fingerprint"] != before
