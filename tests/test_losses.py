"""Eq. 3 / Eq. 4 loss terms against hand-computed values."""
import math

import pytest
import torch

from cpsl.config.ablations import Switches, switches_for
from cpsl.model.losses import (
    diversity_loss,
    reconstruction_loss,
    renyi2_spectral_entropy,
    statistical_loss,
    total_loss,
    unimodal_loss,
)
from cpsl.model.network import ModelOutput

LOSS = {"task": "l1", "recon": 1.0, "uni": 0.5, "div": 0.1, "stat": 0.1}


def _out(inputs, mu, var, mask, recon=None, uni=None, pred=None, fused=None):
    b, length = mask.shape
    return ModelOutput(
        prediction=pred if pred is not None else torch.zeros(b),
        uni=uni or {"a": torch.zeros(b), "v": torch.zeros(b)},
        mu=mu, var=var, z=mu,
        recon=recon or {m: inputs[m].clone() for m in inputs},
        inputs=inputs, mask=mask, feature_mask=mask, fused=fused if fused is not None else torch.randn(b, length, 4),
    )


def test_statistical_loss_matches_hand_computation():
    # acoustic tokens [0,1] -> mean .5 var .25 ; [1,1] -> mean 1 var 0
    xa = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    mu_a = torch.tensor([[[0.5, 1.5], [1.0, 1.0]]])   # hidden means 1.0, 1.0 -> errors .5, 0   -> MSE .125
    var_a = torch.tensor([[[0.25, 0.25], [1.0, 0.0]]])  # hidden means .25, .5 -> errors 0, .5   -> MSE .125
    # visual statistics match exactly -> 0
    xv = torch.tensor([[[2.0, 4.0, 0.0], [1.0, 1.0, 1.0]]])  # mean 2 var 8/3 ; mean 1 var 0
    mu_v = torch.tensor([[[2.0, 2.0], [0.0, 2.0]]])
    var_v = torch.tensor([[[8 / 3, 8 / 3], [0.0, 0.0]]])
    out = _out({"a": xa, "v": xv}, {"a": mu_a, "v": mu_v}, {"a": var_a, "v": var_v}, torch.ones(1, 2, dtype=torch.bool))
    assert statistical_loss(out).item() == pytest.approx((0.125 + 0.125 + 0 + 0) / 4)


def test_statistical_loss_ignores_padding_and_averages_per_sample():
    # sample 0: 1 valid token with squared mean-error 1; sample 1: 2 valid tokens with errors 0 and 4 (mean 2)
    x = torch.zeros(2, 3, 2)
    mu = torch.zeros(2, 3, 2)
    mu[0, 0] = 1.0
    mu[1, 1] = 2.0
    mu[0, 1:] = 100.0  # padding: must not count
    mu[1, 2] = 100.0
    mask = torch.tensor([[1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    var = torch.zeros(2, 3, 2)
    out = _out({"a": x, "v": x}, {"a": mu, "v": torch.zeros_like(mu)}, {"a": var, "v": var}, mask)
    # MSE(mu~_a, mu^_a) = mean over samples of (1, (0+4)/2) = 1.5 ; other three MSEs 0
    assert statistical_loss(out).item() == pytest.approx(1.5 / 4)


def test_reconstruction_loss_is_half_sum_of_per_token_mse():
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    xa, xv = torch.zeros(1, 3, 2), torch.zeros(1, 3, 1)
    ra = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [9.0, 9.0]]])  # token MSEs 1, 2 -> 1.5
    rv = torch.tensor([[[3.0], [1.0], [9.0]]])                  # token MSEs 9, 1 -> 5
    out = _out({"a": xa, "v": xv}, {"a": xa, "v": xv}, {"a": xa, "v": xv}, mask, recon={"a": ra, "v": rv})
    assert reconstruction_loss(out).item() == pytest.approx((1.5 + 5) / 2)


def test_unimodal_loss_averages_l1_over_modalities():
    mask = torch.ones(2, 1, dtype=torch.bool)
    x = torch.zeros(2, 1, 1)
    out = _out({"a": x, "v": x}, {"a": x, "v": x}, {"a": x, "v": x}, mask,
               uni={"a": torch.tensor([1.0, -1.0]), "v": torch.tensor([0.0, 3.0])})
    label = torch.tensor([0.0, 1.0])
    assert unimodal_loss(out, label, "l1").item() == pytest.approx(((1 + 2) / 2 + (0 + 2) / 2) / 2)
    assert unimodal_loss(out, label, "mse").item() == pytest.approx(((1 + 4) / 2 + (0 + 4) / 2) / 2)


def test_renyi_entropy_by_hand_and_padding_ignored():
    # tokens e1, -e1, e2, -e2: covariance spectrum (2, 2) -> p = (.5, .5) -> H2 = log 2
    x = torch.tensor([[[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [50, 50, 50]]])
    mask = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)
    assert renyi2_spectral_entropy(x, mask).item() == pytest.approx(math.log(2), abs=1e-5)
    # a single valid token has no spread: entropy 0, finite
    one_token = torch.tensor([[1, 0, 0, 0, 0]], dtype=torch.bool)
    assert renyi2_spectral_entropy(x, one_token).item() == pytest.approx(0.0, abs=1e-6)


def test_diversity_loss_lower_for_diverse_features_and_descent_diversifies():
    torch.manual_seed(0)
    mask = torch.ones(2, 12, dtype=torch.bool)
    x = torch.zeros(2, 12, 1)
    direction = torch.randn(1, 1, 8)
    redundant = torch.randn(2, 12, 1) * direction + 0.01 * torch.randn(2, 12, 8)  # ~rank 1
    diverse = torch.randn(2, 12, 8)
    mk = lambda f: _out({"a": x, "v": x}, {"a": x, "v": x}, {"a": x, "v": x}, mask, fused=f)  # noqa: E731
    assert diversity_loss(mk(diverse)).item() < diversity_loss(mk(redundant)).item() - 0.5
    feats = redundant.clone().requires_grad_(True)
    opt = torch.optim.Adam([feats], lr=0.05)
    before = diversity_loss(mk(feats)).item()
    for _ in range(20):
        opt.zero_grad()
        diversity_loss(mk(feats)).backward()
        opt.step()
    after = diversity_loss(mk(feats.detach()))
    assert after.item() < before - 0.3  # minimising raised the spectral entropy (more independent directions)


def _random_out(requires_grad=True):
    torch.manual_seed(1)
    b, length = 3, 4
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[2, 2:] = False
    t = lambda *s: torch.randn(*s, requires_grad=requires_grad)  # noqa: E731
    return _out({"a": torch.rand(b, length, 2), "v": torch.rand(b, length, 3)},
                {"a": t(b, length, 5), "v": t(b, length, 5)},
                {"a": t(b, length, 5).exp(), "v": t(b, length, 5).exp()}, mask,
                recon={"a": t(b, length, 2), "v": t(b, length, 3)}, uni={"a": t(b), "v": t(b)}, pred=t(b),
                fused=t(b, length, 6))


def test_total_loss_is_weighted_sum_of_enabled_terms():
    out, label = _random_out(), torch.randn(3)
    full = total_loss(out, label, LOSS, switches_for("A6"))
    assert set(full) == {"total", "task", "recon", "uni", "div", "stat"}
    expect = full["task"] + 1.0 * full["recon"] + 0.5 * full["uni"] + 0.1 * full["div"] + 0.1 * full["stat"]
    assert full["total"].item() == pytest.approx(expect.item(), rel=1e-6)
    assert full["task"].item() == pytest.approx((out.prediction - label).abs().mean().item())
    no_sl = total_loss(out, label, LOSS, switches_for("A4"))  # SL off: reported, detached, excluded
    assert not no_sl["stat"].requires_grad and no_sl["stat"].item() == pytest.approx(full["stat"].item())
    assert no_sl["total"].item() == pytest.approx((expect - 0.1 * full["stat"]).item(), rel=1e-6)
    bare = total_loss(out, label, LOSS, Switches(recon=False, uni=False, div=False))
    assert bare["total"].item() == pytest.approx(bare["task"].item())
    mse = total_loss(out, label, dict(LOSS, task="mse"), Switches())
    assert mse["task"].item() == pytest.approx(((out.prediction - label) ** 2).mean().item())


def test_total_loss_bad_params_name_the_key():
    out = _random_out(False)
    with pytest.raises(KeyError, match="loss.stat"):
        total_loss(out, torch.zeros(3), {k: v for k, v in LOSS.items() if k != "stat"}, Switches())
    with pytest.raises(ValueError, match="loss.task"):
        total_loss(out, torch.zeros(3), dict(LOSS, task="huber"), Switches())
