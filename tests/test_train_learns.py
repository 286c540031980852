"""End to end: `run_train` on a small synthetic cache with a learnable signal (sentiment words in the text,
the label echoed on one acoustic feature) learns with the full model (A6): the validation correlation of the
selected epoch is clearly positive, and every run file is written in its documented form."""
from __future__ import annotations

import json
import math

import torch
from train_helpers import make_cache, small_params, tiny_text_model

from cpsl.formats.run_folder import HISTORY_COLUMNS, read_history
from cpsl.stages.train import run_train


def test_full_model_learns_a_synthetic_signal(tmp_path):
    text = tiny_text_model(tmp_path / "text")
    cache = make_cache(tmp_path / "cache.h5", n_train=96, n_valid=48, n_test=8, seq_len=16, learnable=True)
    params = small_params(text, **{"train.epochs": 4, "train.lr": 2e-3, "model.intermediate_dim": 16,
                                   "model.fusion_dim": 16})
    run = tmp_path / "run"
    assert run_train(params, seed=0, data_path=cache, out_dir=run) == 0

    history = read_history(run / "history.csv")
    assert (run / "history.csv").read_text().splitlines()[0] == ",".join(HISTORY_COLUMNS)
    assert [row["epoch"] for row in history] == list(range(4))
    summary = json.loads((run / "train_summary.json").read_text())
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["epoch"] == summary["best_epoch"]
    # selection on the validation MAE
    assert summary["best_valid"]["valid/mae"] == min(row["valid/mae"] for row in history)
    assert best["valid"]["valid/corr"] > 0.5, history
    assert history[-1]["train/task"] < history[0]["train/task"]
    assert summary["steps"] == 4 * 12 and summary["world_size"] == 1 and summary["ablation"] == "A6"
    assert best["meta"]["text_model"] == text and best["meta"]["acoustic_dim"] == 5
    # the modulation ran inside its window: coefficients and gradient norms were measured
    assert all(math.isfinite(row["gm/g_a"]) and row["gm/c_a"] <= 1.0 for row in history)
    assert (run / "dvclive" / "metrics.json").is_file()
    assert (run / "dvclive" / "plots" / "metrics" / "valid" / "corr.tsv").is_file()
