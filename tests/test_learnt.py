"""The a/v-not-learnt rule (cpsl.metrics.av_learnt) on hand-made evidence: each condition switched on and off.
The end-to-end cases (a frozen run is marked, a planted-signal run is not) are in tests/test_planted_signal.py."""
import numpy as np
import pytest

from cpsl.metrics import av_learnt

LABELS = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])  # median 0: the best constant's MAE is 1.2
CONSTANT = 1.2


def _history(mae_a, mae_v):
    return [{"epoch": e, "gm/mae_a": a, "gm/mae_v": v} for e, (a, v) in enumerate(zip(mae_a, mae_v))]


def _reliance(acoustic, visual):
    return {"acoustic": {"mae": float(np.mean(acoustic))}, "visual": {"mae": float(np.mean(visual))},
            "draws": {"acoustic": {"mae": list(acoustic)}, "visual": {"mae": list(visual)}}, "permutations": 5}


FLAT = _history([1.25, 1.21, 1.19, 1.17], [1.30, 1.22, 1.2, 1.12])  # last 3 epochs: 5 % below 1.2 at most
NOISE = _reliance([0.002, -0.003, 0.001, 0.0, -0.001], [0.004, 0.0, 0.006, -0.002, 0.001])


def test_constant_predictor_is_the_median():
    assert av_learnt.constant_predictor_mae(LABELS) == pytest.approx(CONSTANT)
    skewed = [0.0, 0.0, 0.0, 3.0]
    assert av_learnt.constant_predictor_mae(skewed) < np.mean(np.abs(np.array(skewed) - np.mean(skewed)))


def test_flat_heads_and_reliance_within_noise_are_marked():
    verdict = av_learnt.assess(True, FLAT, NOISE, CONSTANT)
    assert verdict["status"] == "not_learnt" and verdict["av_not_learnt"]
    v = verdict["streams"]["visual"]
    assert v["head"]["flat"] and v["reliance"]["within_noise"] and v["learnt"] is False
    assert v["head"]["limit"] == pytest.approx(0.95 * CONSTANT)
    assert v["head"]["final_train_mae"] == pytest.approx((1.22 + 1.2 + 1.12) / 3)  # one low epoch is not enough


def test_a_head_that_learnt_unmarks_the_run():
    heads = _history([1.25, 1.21, 1.19, 1.2], [1.30, 1.1, 1.05, 1.0])  # visual ends 12 % below the constant
    verdict = av_learnt.assess(True, heads, NOISE, CONSTANT)
    assert verdict["status"] == "learnt" and not verdict["av_not_learnt"]
    assert verdict["streams"]["visual"]["learnt"] and verdict["streams"]["acoustic"]["learnt"] is False


def test_a_reliance_beyond_noise_unmarks_the_run():
    consistent = _reliance([0.0] * 5, [0.05, 0.06, 0.055, 0.05, 0.058])   # small but far above its spread
    assert av_learnt.assess(True, FLAT, consistent, CONSTANT)["status"] == "learnt"
    noisy = _reliance([0.0] * 5, [0.2, -0.15, 0.1, -0.1, 0.0])           # mean 0.01, se 0.06: noise
    assert av_learnt.assess(True, FLAT, noisy, CONSTANT)["status"] == "not_learnt"
    below_floor = _reliance([0.0] * 5, [0.010, 0.011, 0.0105, 0.0102, 0.0108])  # tight, but < 1 % of 1.2
    assert av_learnt.assess(True, FLAT, below_floor, CONSTANT)["status"] == "not_learnt"


def test_a_row_without_heads_is_judged_by_reliance_alone():
    """A Table 1 baseline (no unimodal heads, no gm/mae_* in its history) is judged on its reliance draws."""
    assert av_learnt.assess(True, None, NOISE, CONSTANT)["status"] == "not_learnt"
    assert av_learnt.assess(True, [{"epoch": 0}], _reliance([0.0] * 5, [0.3, 0.31, 0.29, 0.3, 0.3]),
                         CONSTANT)["status"] == "learnt"


def test_no_av_path_and_no_evidence():
    assert av_learnt.assess(False, FLAT, NOISE, CONSTANT)["status"] == "not_applicable"
    unknown = av_learnt.assess(True, None, {"permutations": 0, "note": "not run"}, CONSTANT)
    assert unknown["status"] == "unknown" and not unknown["av_not_learnt"]


def test_row_summary_and_table_cells():
    marked = {"status": "not_learnt"}
    row = av_learnt.row_summary({0: marked, 1: {"status": "learnt"}, 2: marked})
    assert row["marked_seeds"] == [0, 2] and av_learnt.table_cell(row) == f"2/3 {av_learnt.MARK}"
    assert av_learnt.table1_suffix(row) == f" {av_learnt.MARK}"
    clean = av_learnt.row_summary({0: {"status": "learnt"}})
    assert av_learnt.table_cell(clean) == "0/1" and av_learnt.table1_suffix(clean) == ""
    assert av_learnt.table_cell(av_learnt.row_summary({0: {"status": "not_applicable"}})) == "n/a"
    assert av_learnt.table_cell(av_learnt.row_summary({0: None})) == "?"  # evaluated before the rule existed
    assert "train.lr_new_modules" in av_learnt.hint_line("results/mosi/A6-seed0")


def test_a_row_whose_prediction_reads_no_av_is_not_judged_and_says_why():
    """ITHP's prediction reads the text only (a/v are training targets of its bottleneck): not_applicable with
    the spec's reason, never marked; a row's hint names the param that sets its new modules' rate."""
    from cpsl.stages.evaluate import _rate_setting, _reads_av

    assert _reads_av({"ablation": "A6"}) == (True, None) and _reads_av({"ablation": "T0"})[0] is False
    assert _reads_av({"ablation": "MAG"}) == (True, None)
    reads, note = _reads_av({"ablation": "ITHP"})
    assert reads is False and "training targets" in note
    verdict = av_learnt.assess(reads, FLAT, NOISE, CONSTANT, note=note)
    assert verdict["status"] == "not_applicable" and not verdict["av_not_learnt"] and verdict["note"] == note
    assert _rate_setting("A6", "mosi") == "train.lr_new_modules"
    assert _rate_setting("MAG", "demo") == "baselines.mag.mosi.train.lr_new_modules"
    assert "baselines.mag.mosi.train.lr_new_modules" in av_learnt.hint_line("r", _rate_setting("MAG", "demo"))
