"""Metrics on small hand-computed cases (values worked out by hand in the comments)."""
import json
import math

import numpy as np
import pytest
from sklearn.metrics import f1_score

from cpsl.metrics.scores import (
    METRIC_KEYS,
    compute_metrics,
    json_safe,
    pearson,
    round_half_away,
    weighted_f1,
)

# label / prediction chosen to hit: a zero label, a zero prediction, .5 ties and a sign error.
LABEL = np.array([-2.0, -0.5, 0.0, 0.5, 3.0, 1.5])
PRED = np.array([-1.5, 0.2, 0.0, 0.6, 2.0, -0.5])


def test_hand_computed_case():
    m = compute_metrics(PRED, LABEL)
    # non-zero: segments 0,1,3,4,5; truth F,F,T,T,T; pred>0 F,T,T,T,F -> 3/5 right.
    assert m["acc2_nonzero"] == pytest.approx(60.0)
    # tp=2 fp=1 fn=1 tn=1: F1+ = 4/6, F1- = 2/4, weighted by support 3 and 2 -> (2 + 1)/5.
    assert m["f1_nonzero"] == pytest.approx(60.0)
    # has-zero: truth>=0 F,F,T,T,T,T; pred>=0 F,T,T,T,T,F -> 4/6; the 0.0 prediction counts non-negative.
    assert m["acc2_haszero"] == pytest.approx(400 / 6)
    # tp=3 fp=1 fn=1 tn=1: F1+ = 6/8, F1- = 2/4, supports 4 and 2 -> (3 + 1)/6.
    assert m["f1_haszero"] == pytest.approx(400 / 6)
    assert m["mae"] == pytest.approx(4.3 / 6)
    assert m["mae_nonzero_subset"] == pytest.approx(4.3 / 5)
    # acc7 classes, half away from zero: label -2,-1,0,1,3,2; pred -2,0,0,1,2,-1 -> 3/6.
    assert m["acc7"] == pytest.approx(50.0)
    # acc5 after clip to [-2,2]: label -2,-1,0,1,2,2; pred -2,0,0,1,2,-1 -> 4/6.
    assert m["acc5"] == pytest.approx(400 / 6)
    assert m["n"] == 6 and m["n_nonzero"] == 5
    assert m["corr"] == pytest.approx(np.corrcoef(PRED, LABEL)[0, 1])
    nz = LABEL != 0
    assert m["corr_nonzero_subset"] == pytest.approx(np.corrcoef(PRED[nz], LABEL[nz])[0, 1])
    assert set(METRIC_KEYS) <= set(m)


def test_pearson_by_hand():
    # dx = -1,0,1; dy = -1,1,0: sum dx*dy = 1, sxx = syy = 2 -> 0.5
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert pearson([1, 2, 3], [-3, -2, -1]) == pytest.approx(1.0)


def test_round_half_away_from_zero_differs_from_numpy():
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49, -0.51])
    assert round_half_away(x).tolist() == [-3, -2, -1, 1, 2, 3, 0, -1]
    assert np.round(x).tolist() != round_half_away(x).tolist()  # numpy: half to even


def test_acc7_tie_rounding_changes_the_class():
    # label 2.5 is class 3 (away from zero), np.round would make it 2; prediction 2.6 -> 3.
    m = compute_metrics([2.6, -0.4], [2.5, -0.5])
    # -0.5 -> -1 while -0.4 -> 0: second segment wrong.
    assert m["acc7"] == pytest.approx(50.0)


def test_clipping_before_rounding():
    m = compute_metrics([5.0, -9.0], [3.0, -2.4])
    assert m["acc7"] == pytest.approx(50.0)  # 5 -> 3 right; -9 -> -3 vs -2 wrong
    assert m["acc5"] == pytest.approx(100.0)  # both clipped to the ends: 2 == 2, -2 == -2


def test_constant_prediction_gives_nan_corr_not_crash():
    label = np.array([-1.0, 0.0, 1.0, 2.0])
    m = compute_metrics(np.full(4, 0.5), label)
    assert math.isnan(m["corr"]) and math.isnan(m["corr_nonzero_subset"])
    assert m["acc2_nonzero"] == pytest.approx(200 / 3)  # all predicted positive: 2 of 3 non-zero right
    # weighted F1: positive class F1 = 2*2/(2*2+1) = 0.8 on support 2; negative never predicted -> 0.
    assert m["f1_nonzero"] == pytest.approx(100 * 0.8 * 2 / 3)
    assert m["mae"] == pytest.approx((1.5 + 0.5 + 0.5 + 1.5) / 4)


def test_all_zero_labels_leave_nonzero_metrics_undefined():
    m = compute_metrics([0.3, -0.2, 0.0], [0.0, 0.0, 0.0])
    for key in ("acc2_nonzero", "f1_nonzero", "mae_nonzero_subset", "corr_nonzero_subset"):
        assert math.isnan(m[key]), key
    assert m["n_nonzero"] == 0
    assert m["acc2_haszero"] == pytest.approx(200 / 3)  # -0.2 is the only negative prediction
    assert json.loads(json.dumps(json_safe(m)))["acc2_nonzero"] is None


def test_zero_prediction_counts_negative_in_nonzero_convention():
    m = compute_metrics([0.0, 0.0], [1.0, -1.0])
    assert m["acc2_nonzero"] == pytest.approx(50.0)
    assert m["acc2_haszero"] == pytest.approx(50.0)  # 0.0 >= 0 is "non-negative": right for 1.0, wrong for -1.0


@pytest.mark.parametrize("seed", range(5))
def test_weighted_f1_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    truth = rng.random(n) < rng.random()
    pred = rng.random(n) < rng.random()
    expected = f1_score(truth, pred, average="weighted", zero_division=0)
    assert weighted_f1(truth, pred) == pytest.approx(expected)


def test_weighted_f1_single_class_cases_match_sklearn():
    for truth, pred in [([1, 1, 1], [1, 1, 1]), ([0, 0], [0, 0]), ([1, 1, 1], [1, 0, 0]), ([0, 0, 1], [1, 1, 1])]:
        t, p = np.array(truth, bool), np.array(pred, bool)
        assert weighted_f1(t, p) == pytest.approx(f1_score(t, p, average="weighted", zero_division=0))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="3 values but label has 2"):
        compute_metrics([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="non-finite"):
        compute_metrics([1, np.nan], [1, 2])
    with pytest.raises(ValueError, match="empty"):
        compute_metrics([], [])
