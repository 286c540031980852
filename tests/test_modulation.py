"""Eq. 5, Eq. 6, the window, GE and the in-place gradient scaling, against hand-computed values."""
import math

import pytest
import torch
from torch import nn

from cpsl.config.ablations import Switches
from cpsl.model.modulation import (
    conflict_penalty,
    eq5_coefficients,
    imbalance_degree,
    in_window,
    inverse_error_scores,
    mean_grad_norm,
    modulate_gradients,
)

TANH1, TANH2, TANH15 = 0.7615941559557649, 0.9640275800758169, 0.9051482536448664
GM = {"alpha": 1.0, "start_epoch": 0, "end_epoch": 25, "eps": 1e-8, "coefficient": "paper"}
CP = {"eta": 0.5}


def floats(*values):
    """Tensors (0-dim) as Python values: the functions under test work on the device."""
    return tuple(v.item() if isinstance(v, torch.Tensor) else v for v in values)


def eq5(*args):
    return floats(*eq5_coefficients(*args))


def modulate(*args):
    return modulate_gradients(*args).to_host()


def test_inverse_error_scores():
    assert floats(*inverse_error_scores(0.5, 1.0, 0.0)) == (2.0, 1.0)
    s_a, s_v = floats(*inverse_error_scores(0.5, 1.5, 0.5))
    assert (s_a, s_v) == pytest.approx((1.0, 0.5))


def test_eq5_paper_and_shifted_when_acoustic_is_better():
    # s_a = 2, s_v = 1, ratio 2
    assert eq5(0.5, 1.0, 1.0, 0.0, "paper") == pytest.approx((1 - TANH2, 1.0))
    assert eq5(0.5, 1.0, 1.0, 0.0, "shifted") == pytest.approx((1 - TANH1, 1.0))


def test_eq5_otherwise_branch_visual_better_and_alpha():
    # s_a = 2/3, s_v = 2, ratio 3, alpha .5
    assert eq5(1.5, 0.5, 0.5, 0.0, "paper") == pytest.approx((1.0, 1 - TANH15))
    assert eq5(1.5, 0.5, 0.5, 0.0, "shifted") == pytest.approx((1.0, 1 - TANH1))


def test_eq5_tie_gives_ones_and_eps_enters_the_ratio():
    assert eq5(0.7, 0.7, 1.0, 1e-8, "paper") == (1.0, 1.0)
    assert eq5(0.7, 0.7, 1.0, 1e-8, "shifted") == (1.0, 1.0)
    # eps .5: s_a = 1, s_v = .5, ratio = 1 / (.5 + .5) = 1
    assert eq5(0.5, 1.5, 1.0, 0.5, "paper") == pytest.approx((1 - TANH1, 1.0))
    assert eq5(0.5, 1.5, 1.0, 0.5, "shifted") == pytest.approx((1.0, 1.0))


def test_eq5_paper_form_is_always_below_one_minus_tanh_alpha():
    for mae_a in (0.99, 0.9, 0.5, 0.1):
        c_a, c_v = eq5(mae_a, 1.0, 1.0, 1e-8, "paper")
        assert c_a < 1 - TANH1 and c_v == 1.0
    with pytest.raises(ValueError, match="gm.coefficient"):
        eq5(0.5, 1.0, 1.0, 1e-8, "typo")


@pytest.mark.parametrize("mae_a,mae_v,g_a,g_v,expect", [
    (0.5, 1.0, 2.0, 1.0, (0.4, 0.9, True, False)),    # a better and larger grad -> a penalised
    (0.5, 1.0, 1.0, 2.0, (0.8, 0.9, False, False)),   # a better, v larger grad -> none
    (1.0, 0.5, 1.0, 2.0, (0.8, 0.45, False, True)),   # v better and larger grad -> v penalised
    (1.0, 0.5, 2.0, 1.0, (0.8, 0.9, False, False)),   # v better, a larger grad -> none
    (0.5, 0.5, 2.0, 1.0, (0.8, 0.9, False, False)),   # tie in MAE -> none
])
def test_conflict_penalty_cases(mae_a, mae_v, g_a, g_v, expect):
    assert floats(*conflict_penalty(0.8, 0.9, mae_a, mae_v, g_a, g_v, 0.5)) == pytest.approx(expect)


def test_window_is_inclusive_at_both_ends():
    assert [in_window(e, 0, 25) for e in (-1, 0, 1, 25, 26)] == [False, True, True, True, False]
    assert [in_window(e, 3, 3) for e in (2, 3, 4)] == [False, True, False]


def test_mean_grad_norm_and_imbalance():
    m = nn.Linear(2, 2)
    m.extra = nn.Parameter(torch.ones(3))  # no grad: not counted
    m.weight.grad = torch.tensor([[3.0, 4.0], [0.0, 0.0]])  # norm 5
    m.bias.grad = torch.tensor([0.0, 1.0])                   # norm 1
    assert mean_grad_norm(m).item() == pytest.approx(3.0)
    assert mean_grad_norm(nn.Linear(2, 2)).item() == 0.0
    assert imbalance_degree(0.5, 1.0, 0.0).item() == pytest.approx(1 / 3)  # s 2 and 1
    assert imbalance_degree(0.8, 0.8, 1e-8).item() == 0.0


def _encoders(scale_a=1.0, scale_v=1.0, size=4, seed=0):
    torch.manual_seed(seed)
    enc = {"a": nn.Linear(size, size), "v": nn.Linear(size, size)}
    for key, s in (("a", scale_a), ("v", scale_v)):
        for p in enc[key].parameters():
            p.grad = torch.randn_like(p) * s
    return enc


def _grads(enc):
    return {k: [p.grad.clone() for p in m.parameters()] for k, m in enc.items()}


def test_gm_scales_grads_exactly_by_eq5_coefficient():
    enc = _encoders()
    before = _grads(enc)
    tele = modulate(enc, 0.5, 1.0, 3, GM, CP, Switches(gm=True), None)
    assert tele["active"] and tele["c_a"] == pytest.approx(1 - TANH2) and tele["c_v"] == 1.0
    assert tele["g_a"] == pytest.approx(sum(g.norm().item() for g in before["a"]) / 2)
    for g0, p in zip(before["a"], enc["a"].parameters()):
        torch.testing.assert_close(p.grad, g0 * tele["c_a"])
    for g0, p in zip(before["v"], enc["v"].parameters()):
        torch.testing.assert_close(p.grad, g0)


def test_cp_multiplies_the_conflicting_modality_by_eta():
    enc = _encoders(scale_a=10.0)  # a better AND larger gradient norm
    before = _grads(enc)
    tele = modulate(enc, 0.5, 1.0, 0, dict(GM, coefficient="shifted"), CP,
                              Switches(gm=True, cp=True), None)
    assert tele["conflict_a"] and not tele["conflict_v"]
    assert tele["c_a"] == pytest.approx((1 - TANH1) * 0.5)
    for g0, p in zip(before["a"], enc["a"].parameters()):
        torch.testing.assert_close(p.grad, g0 * tele["c_a"])
    # CP alone (gm off): coefficient 1 * eta
    enc = _encoders(scale_a=10.0)
    tele = modulate(enc, 0.5, 1.0, 0, GM, CP, Switches(cp=True), None)
    assert (tele["c_a"], tele["c_v"]) == (0.5, 1.0)


def test_outside_window_or_switches_off_leaves_grads_untouched():
    for epoch, sw in ((26, Switches(gm=True, ge=True, cp=True)), (3, Switches(ge=True))):
        enc = _encoders()
        before = _grads(enc)
        tele = modulate(enc, 0.5, 1.0, epoch, GM, CP, sw, torch.Generator().manual_seed(0))
        assert not tele["active"] and (tele["c_a"], tele["c_v"]) == (1.0, 1.0) and math.isnan(tele["g_a"])
        for k in enc:
            for g0, p in zip(before[k], enc[k].parameters()):
                assert torch.equal(p.grad, g0)


def test_ge_noise_is_reproducible_and_has_the_unmodulated_std():
    sw = Switches(gm=True, ge=True)
    runs = []
    for seed in (5, 5, 6):
        enc = _encoders(size=300)
        before = _grads(enc)
        tele = modulate(enc, 0.5, 1.0, 0, GM, CP, sw, torch.Generator().manual_seed(seed))
        runs.append(_grads(enc))
    assert all(torch.equal(x, y) for x, y in zip(runs[0]["a"] + runs[0]["v"], runs[1]["a"] + runs[1]["v"]))
    assert not torch.equal(runs[0]["a"][0], runs[2]["a"][0])
    for key, c in (("a", tele["c_a"]), ("v", tele["c_v"])):
        g0, g1 = before[key][0], runs[2][key][0]  # the 300x300 weight
        noise = g1 - c * g0
        assert noise.std().item() == pytest.approx(g0.std().item(), rel=0.02)
        assert abs(noise.mean().item()) < 0.02 * g0.std().item()  # 6 standard errors for 90,000 draws
    with pytest.raises(ValueError, match="Generator"):
        modulate(_encoders(), 0.5, 1.0, 0, GM, CP, sw, None)
