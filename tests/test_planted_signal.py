"""Issue 7: on a cache whose label is recoverable from the VISUAL stream but not from the text, the model must
find it. A0 (no modulation) is trained with the real `train` and `evaluate` stages on that cache and on the
same cache with a/v zeroed, over 3 seeds; A0 must beat the zeroed control by a clear margin on every seed, and
the modality-reliance check must see it rely on the visual stream (and T0, text only, on nothing).
Issue 18: the same A0 with its new modules (AME, fusion, heads) frozen is marked "a/v not learnt" by
cpsl.metrics.av_learnt, the planted-signal runs are not, and the a/v-zeroed control is marked too."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from train_helpers import planted_caches, small_params, tiny_text_model

from cpsl.stages.evaluate import run_evaluate
from cpsl.stages.train import run_train
from cpsl.train.recipe import Recipe

SEEDS = (0, 1, 2)
MARGIN_CORR = 0.4  # test Pearson r: planted visual signal vs the same model with a/v zeroed
# new modules faster than the text encoder (train.lr_new_modules), as the demo: a randomly initialised text
# encoder at a high rate memorises the training segments by their filler words instead
SETTINGS = {"train.epochs": 6, "train.lr": 1e-4, "train.lr_new_modules": 5e-3, "model.intermediate_dim": 16,
            "model.fusion_dim": 16,
            "train.warmup_ratio": 0.0, "eval.reliance_permutations": 3}


def _frozen_optimizer(self, tp, *args, **kwargs):
    """The trainer's optimizer with the new modules' group at lr 0: AdamW then never moves them (the update
    and the decoupled weight decay both scale with lr), so the a/v path keeps its random initialisation."""
    optimizer = _REAL_OPTIMIZER(self, tp, *args, **kwargs)
    optimizer.param_groups[1]["lr"] = 0.0
    return optimizer


_REAL_OPTIMIZER = Recipe.optimizer


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planted")
    text = tiny_text_model(tmp / "text")
    caches = planted_caches(tmp)
    metrics = {}
    for seed in SEEDS:
        for name, ablation in (("planted", "A0"), ("zeroed", "A0"), ("t0", "T0")):
            cache = caches["zeroed" if name == "zeroed" else "planted"]
            if name == "t0" and seed != SEEDS[0]:
                continue
            params = small_params(text, **SETTINGS)
            run = tmp / f"{name}-{ablation}-seed{seed}"
            assert run_train(params, seed=seed, ablation=ablation, data_path=cache, out_dir=run) == 0
            run_evaluate(params, run, data_path=cache)
            metrics[(name, seed)] = json.loads((run / "metrics.json").read_text())
    with pytest.MonkeyPatch.context() as mp:  # the new modules frozen, the text encoder and the rest unchanged
        mp.setattr(Recipe, "optimizer", _frozen_optimizer)
        params = small_params(text, **SETTINGS)
        run = tmp / "frozen-A0"
        assert run_train(params, seed=SEEDS[0], ablation="A0", data_path=caches["planted"], out_dir=run) == 0
        with contextlib.redirect_stderr(io.StringIO()) as err:
            run_evaluate(params, run, data_path=caches["planted"])
        metrics[("frozen", SEEDS[0])] = json.loads((run / "metrics.json").read_text())
        metrics[("frozen", SEEDS[0])]["stderr"] = err.getvalue()
    return metrics


def test_visual_signal_reaches_the_prediction_on_every_seed(runs):
    planted = np.array([runs[("planted", s)]["test"]["corr"] for s in SEEDS])
    zeroed = np.array([runs[("zeroed", s)]["test"]["corr"] or 0.0 for s in SEEDS])  # constant prediction: null
    print(f"test corr planted {planted.round(3)} vs a/v zeroed {zeroed.round(3)}")
    assert (planted - zeroed > MARGIN_CORR).all(), (planted, zeroed)
    mae_planted = np.array([runs[("planted", s)]["test"]["mae"] for s in SEEDS])
    mae_zeroed = np.array([runs[("zeroed", s)]["test"]["mae"] for s in SEEDS])
    assert (mae_planted < mae_zeroed).all()


def test_reliance_check_sees_the_visual_stream_and_nothing_in_t0(runs):
    for s in SEEDS:
        rel = runs[("planted", s)]["reliance"]
        assert rel["visual"]["mae"] > 0.2, rel        # shuffling the informative stream hurts
        assert rel["visual"]["mae"] > 5 * abs(rel["acoustic"]["mae"]), rel  # the noise stream barely matters
    t0 = runs[("t0", SEEDS[0])]["reliance"]
    assert t0["acoustic"]["mae"] == 0.0 and t0["visual"]["mae"] == 0.0  # text only: exactly no effect


def test_frozen_new_modules_are_marked_and_planted_runs_are_not(runs):
    frozen = runs[("frozen", SEEDS[0])]["learnt"]
    assert frozen["status"] == "not_learnt" and frozen["av_not_learnt"], frozen
    hint = [line for line in runs[("frozen", SEEDS[0])]["stderr"].splitlines() if "did not learn" in line]
    assert len(hint) == 1 and "train.lr_new_modules" in hint[0] and "frozen-A0" in hint[0]
    for stream in ("acoustic", "visual"):
        assert frozen["streams"][stream]["head"]["flat"] and frozen["streams"][stream]["reliance"]["within_noise"]
    for s in SEEDS:
        planted = runs[("planted", s)]["learnt"]
        assert planted["status"] == "learnt" and not planted["av_not_learnt"], planted
        assert planted["streams"]["visual"]["learnt"]  # the stream that carries the label
        # a/v zeroed: there is nothing to learn, and the rule says so
        assert runs[("zeroed", s)]["learnt"]["status"] == "not_learnt"
    assert runs[("t0", SEEDS[0])]["learnt"]["status"] == "not_applicable"
