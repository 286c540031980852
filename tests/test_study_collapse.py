"""benchmarks/study_collapse.py (issue 25, item 3): its planted data make the visual stream the dominant one, its
settings validate, and its summary counts collapses and pairs A6 with A5 by seed."""
from __future__ import annotations

import numpy as np
import pytest
from project_copy import load_benchmark


def _study():
    return load_benchmark("study_collapse")


def test_the_planted_visual_stream_dominates_the_acoustic_one(tmp_path):
    from cpsl.formats.cache import read_split

    study = _study()
    train = read_split(study.planted_cache(tmp_path / "c.h5"), "train")
    label = np.asarray(train["label"])
    words = np.asarray(train["attention_mask"]).astype(bool)
    words[:, 0] = False

    def seg_mean_corr(x):
        m = (np.asarray(x)[:, :, 0] * words).sum(1) / words.sum(1)
        return np.corrcoef(m, label)[0, 1]

    # segment means (what a pooled head can reach): the visual copy is near-clean, the acoustic one noisy
    assert seg_mean_corr(train["visual"]) > 0.97 and 0.5 < seg_mean_corr(train["acoustic"]) < 0.9


@pytest.mark.parametrize("setting", ["paper", "sl_x100", "ge_modulated", "adamw_hot"])
def test_each_setting_validates(setting):
    study = _study()
    params = study.study_params("text", 8, study.SETTINGS[setting][0])
    assert params["train"]["epochs"] == 8 and params["gm"]["end_epoch"] == 7


def test_the_summary_counts_collapses_and_pairs_by_seed():
    study = _study()

    def run(ablation, seed, corr=None, stop=False):
        r = {"setting": "s", "ablation": ablation, "seed": seed, "collapse_guard_stop": stop, "loss_spikes": [],
             "gm/c_a": 1.0, "gm/c_v": 0.2, "gm/conflicts": 3.0}
        if corr is not None:
            r["test"] = {"mae": 1.0 - corr, "corr": corr}
        return r

    runs = [run("A5", 0, 0.9), run("A6", 0, 0.8), run("A5", 1, 0.1), run("A6", 1, 0.9), run("A5", 2, stop=True),
            run("A6", 2, stop=True)]
    s = study.summarise(runs)["s"]
    assert s["collapsed"] == {"rule": "collapse-guard stop, or test Corr < 0.5", "seeds": 3, "A5": 2, "A6": 1,
                              "A5_only": 1, "A6_only": 0}
    assert s["A6_minus_A5_mae"]["per_seed"] == pytest.approx({0: 0.1, 1: -0.8})  # seed 2: no test metrics
    assert s["A5"]["collapse_guard_stops"] == 1 and s["A5"]["seeds"] == [0, 1]


def test_the_summary_pairs_any_two_rows():
    study = _study()
    runs = [{"setting": "s", "ablation": a, "seed": 0, "collapse_guard_stop": False, "loss_spikes": [],
             "gm/c_a": 1.0, "gm/c_v": 0.2, "gm/conflicts": 0.0, "test": {"mae": m, "corr": 0.9}}
            for a, m in (("B5", 0.5), ("C1", 0.7))]
    s = study.summarise(runs, ("B5", "C1"))["s"]
    assert s["C1_minus_B5_mae"]["per_seed"] == pytest.approx({0: 0.2}) and s["collapsed"]["C1_only"] == 0
