"""The collapse guard: a non-finite loss term or gradient stops the run with a report naming the epoch, the
step and the term (or parameter), exit code EXIT_COLLAPSE, and the last good checkpoint left untouched."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from train_helpers import make_cache, small_params, tiny_text_model

from cpsl.formats import run_folder
from cpsl.formats.cache import CacheError, read_attrs, read_split, write_cache
from cpsl.model import recipe as recipe_module
from cpsl.stages.train import run_train
from cpsl.train import loop


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guard")
    text = tiny_text_model(tmp / "text")
    cache = make_cache(tmp / "cache.h5", n_train=16, n_valid=8)
    return tmp, text, cache


def _report(run):
    return json.loads((run / run_folder.COLLAPSE_FILE).read_text())


def test_nan_label_in_the_cache_is_refused_before_the_first_epoch(setup, tmp_path, capfd):
    # A NaN label used to reach the collapse guard, which blamed a loss term; the cache check now names the
    # segment before anything is written (a NaN acoustic/visual feature likewise: tests/test_hostile_runs.py)
    _, text, cache = setup
    splits = {s: read_split(cache, s) for s in ("train", "valid", "test")}
    splits["train"]["label"][3] = np.nan
    poisoned = tmp_path / "poisoned.h5"
    write_cache(poisoned, splits, read_attrs(cache))

    run = tmp_path / "run"
    first = splits["train"]["segment_id"][3]
    with pytest.raises(CacheError, match=rf"split 'train' has 1 non-finite label\(s\), first segment '{first}'"):
        run_train(small_params(text), seed=0, data_path=poisoned, out_dir=run)
    assert not (run / run_folder.COLLAPSE_FILE).exists() and not (run / "dvclive").exists()
    assert not (run / "best.pt").exists() and not (run / "state" / "last.pt").exists()


# eager (the default on CPU) raises before the bad step's optimizer update; sync_free records the step on the device
# and stops at the end of its epoch: the same report, the same kept files
MODES = pytest.mark.parametrize("mode", ["eager", "sync_free"])


@MODES
def test_nan_loss_in_epoch_1_keeps_the_epoch_0_checkpoints(setup, tmp_path, monkeypatch, mode):
    _, text, cache = setup
    real = recipe_module.total_loss
    calls = {"n": 0}

    def poisoned_loss(out, label, loss_params, switches):
        losses = real(out, label, loss_params, switches)
        calls["n"] += 1
        if calls["n"] == 3:  # 2 steps per epoch: epoch 1, step 0 (sync_free runs step 1 before it stops)
            losses["stat"] = losses["stat"] * float("nan")
        return losses

    monkeypatch.setattr(recipe_module, "total_loss", poisoned_loss)
    run = tmp_path / "run"
    params = small_params(text, **{"train.epochs": 3, "execution.step": mode})
    assert run_train(params, seed=0, data_path=cache, out_dir=run) == 3
    report = _report(run)
    assert (report["epoch"], report["step_in_epoch"], report["global_step"]) == (1, 0, 2)
    assert calls["n"] == (3 if mode == "eager" else 4)
    assert "stat" in report["what"]

    state = torch.load(run / "state" / "last.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 0, 2)
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in best["model"].values() if v.is_floating_point())
    assert len((run / "history.csv").read_text().splitlines()) == 2


@MODES
def test_non_finite_gradient_names_the_parameter(setup, tmp_path, monkeypatch, mode):
    _, text, cache = setup
    real = recipe_module.modulate_gradients

    def poisoned_modulation(encoders, *args, **kwargs):
        tele = real(encoders, *args, **kwargs)
        next(encoders["v"].parameters()).grad[0].fill_(float("inf"))
        return tele

    monkeypatch.setattr(recipe_module, "modulate_gradients", poisoned_modulation)
    run = tmp_path / "run"
    params = small_params(text, **{"execution.step": mode})
    assert run_train(params, seed=0, data_path=cache, out_dir=run) == loop.EXIT_COLLAPSE
    report = _report(run)
    assert (report["epoch"], report["step_in_epoch"]) == (0, 0)
    assert "ame.v." in report["what"] and "gradient" in report["what"]
