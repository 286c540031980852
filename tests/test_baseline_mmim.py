"""MMIM (Han et al., EMNLP 2021): its defining equations, that its MI estimators rise with the true mutual
information of a toy pair, its two-stage step, and that the a/v inputs reach the prediction."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence
from train_helpers import one_thread

from cpsl.baselines.mmim import (
    MMIM,
    SequenceEncoder,
    estimator_step,
    losses,
    make_optimizers,
    parameter_groups,
)
from cpsl.baselines.mmim_estimators import (
    ConditionalGaussian,
    CPCPredictor,
    EntropyMemory,
    gaussian_log_likelihood,
    info_nce,
    mixture_entropy,
)
from cpsl.data.planted import planted_split
from cpsl.model.text_encoder import load_text_encoder, tiny_deberta_config

DA, DV, VOCAB, L = 5, 4, 1200, 10
# tiny sizes; every other value is the official code's (params.yaml holds the real section)
HP = {
    "acoustic_hidden": 8, "visual_hidden": 8, "acoustic_out": 8, "visual_out": 8, "rnn_layers": 1,
    "rnn_bidirectional": False, "rnn_dropout": 0.0, "fusion_hidden": 16, "fusion_dropout": 0.0, "cpc_layers": 1,
    "cpc_negatives": "modality", "ba_pairs": ["tv", "ta"], "lld_form": "gaussian", "entropy_memory": 1,
    "cpc_weight": 0.1, "ba_weight": 0.1, "lr_text": 5e-5, "lr_main": 1e-3, "lr_estimator": 1e-3,
    "weight_decay_text": 1e-4, "weight_decay_main": 1e-4, "weight_decay_estimator": 1e-4, "grad_clip": 1.0,
}


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_thread()


def _model(seed: int = 0, **hp) -> MMIM:
    torch.manual_seed(seed)
    return MMIM(load_text_encoder(tiny_deberta_config(VOCAB)), DA, DV, {**HP, **hp})


def _batch(n: int = 12, seed: int = 0) -> dict:
    arrays = planted_split(np.random.default_rng(seed), n, L, (DA, DV), VOCAB, ("text", "acoustic", "visual"))
    return {k: torch.as_tensor(arrays[k]) for k in ("input_ids", "attention_mask", "acoustic", "visual", "label")}


def _inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "acoustic", "visual")}


def _correlated(rho: float, n: int, d: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y ~ N(0, I_d) with corr(x_j, y_j) = rho: I(X;Y) = -d/2 log(1 - rho^2)."""
    x, noise = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    return x, rho * x + math.sqrt(1 - rho ** 2) * noise


# --- the BA bound ------------------------------------------------------------------------------------------------

def test_gaussian_log_likelihood_is_the_normal_log_density_and_official_drops_the_normaliser():
    g = torch.Generator().manual_seed(0)
    mu, logvar, y = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    normal = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(y).sum(-1).mean()
    assert torch.allclose(gaussian_log_likelihood(mu, logvar, y), normal, atol=1e-5)
    official = (-(y - mu) ** 2 / (2 * logvar.exp())).sum(-1).mean()
    assert torch.allclose(gaussian_log_likelihood(mu, logvar, y, "official"), official, atol=1e-6)
    with pytest.raises(ValueError, match="lld_form"):
        gaussian_log_likelihood(mu, logvar, y, "other")


def test_ba_bound_rises_with_the_true_mutual_information_and_stays_below_it():
    """On correlated Gaussians q(y|x) can be exact, so lld + H(Y) reaches I(X;Y) = -d/2 log(1 - rho^2) from below."""
    d, entropy_y = 2, 2 * 0.5 * math.log(2 * math.pi * math.e)  # H(Y) of N(0, I_2)
    estimates, truths = [], []
    for rho in (0.0, 0.5, 0.9):
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(1)
        q = ConditionalGaussian(d, d)
        opt = torch.optim.Adam(q.parameters(), lr=1e-2)
        for _ in range(300):
            x, y = _correlated(rho, 256, d, g)
            opt.zero_grad()
            (-q.log_likelihood(x, y)).backward()
            opt.step()
        with torch.no_grad():
            estimates.append(float(q.log_likelihood(*_correlated(rho, 8192, d, g))) + entropy_y)
        truths.append(-d / 2 * math.log(1 - rho ** 2))
    assert estimates[0] < estimates[1] < estimates[2], estimates
    for est, true in zip(estimates, truths):
        assert true - 0.15 < est < true + 0.05, (estimates, truths)


# --- the entropy estimate ----------------------------------------------------------------------------------------

def test_mixture_entropy_is_a_quarter_of_the_summed_log_determinants():
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(40, 3, generator=g) @ torch.tensor([[2.0, 0, 0], [0.5, 1, 0], [0, 0, 0.3]])
    neg = torch.randn(30, 3, generator=g) * 0.7 + 5.0
    expected = 0.25 * sum(np.linalg.slogdet(np.cov(s.numpy().T, bias=True))[1] for s in (pos, neg))
    assert float(mixture_entropy(pos, neg)) == pytest.approx(expected, rel=1e-4)
    # spreading the samples by c raises the estimate by 1/4 * 2 * k * log c^2 = k log c
    assert float(mixture_entropy(3 * pos, 3 * neg) - mixture_entropy(pos, neg)) == pytest.approx(3 * math.log(3),
                                                                                               rel=1e-4)
    # no more samples than dimensions: a singular covariance, no estimate
    assert float(mixture_entropy(pos[:3], neg)) == 0.0


def test_entropy_memory_keeps_the_last_batches_by_polarity_and_survives_a_state_round_trip():
    memory = EntropyMemory(2)
    label = torch.tensor([1.0, -2.0, 0.0, 0.5])
    assert memory.history("tv") is None
    memory.push("tv", torch.full((4, 2), 1.0, requires_grad=True), label)
    assert memory.history("tv") is None  # not full yet
    memory.push("tv", torch.full((4, 2), 2.0), label)
    memory.push("tv", torch.full((4, 2), 3.0), label)  # drops the first batch
    pos, neg = memory.history("tv")
    assert pos.shape == (4, 2) and neg.shape == (2, 2)  # label 0 belongs to neither component
    assert set(pos[:, 0].tolist()) == {2.0, 3.0} and not pos.requires_grad
    restored = EntropyMemory(2)
    restored.load_state_dict(memory.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(restored.history("tv"), memory.history("tv")))
    with pytest.raises(ValueError, match="entropy_memory"):
        EntropyMemory(3).load_state_dict(memory.state_dict())


# --- the CPC bound -----------------------------------------------------------------------------------------------

def test_info_nce_is_the_cpc_equation_in_both_directions():
    g = torch.Generator().manual_seed(0)
    h, pred = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    hn, pn = h / h.norm(dim=1, keepdim=True), pred / pred.norm(dim=1, keepdim=True)
    s = lambda j, i: float(hn[j] @ pn[i])  # noqa: E731  s(h_m^j, Z^i)
    paper = -np.mean([s(i, i) - math.log(sum(math.exp(s(j, i)) for j in range(5))) for i in range(5)])
    official = -np.mean([s(i, i) - math.log(sum(math.exp(s(i, j)) for j in range(5))) for i in range(5)])
    assert float(info_nce(h, pred, "modality")) == pytest.approx(paper, rel=1e-5)
    assert float(info_nce(h, pred, "prediction")) == pytest.approx(official, rel=1e-5)
    assert paper != pytest.approx(official)


@pytest.mark.parametrize("negatives", ["modality", "prediction"])
def test_cpc_bound_rises_with_the_true_mutual_information_and_stays_below_log_batch(negatives):
    batch, d, estimates = 64, 4, []
    for rho in (0.0, 0.6, 0.95):
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(1)
        predictor = CPCPredictor(d, d)
        opt = torch.optim.Adam(predictor.parameters(), lr=1e-2)
        for _ in range(200):
            x, y = _correlated(rho, batch, d, g)
            opt.zero_grad()
            info_nce(x, predictor(y), negatives).backward()
            opt.step()
        with torch.no_grad():
            held_out = [_correlated(rho, batch, d, g) for _ in range(20)]
            estimates.append(np.mean([math.log(batch) - float(info_nce(x, predictor(y), negatives))
                                      for x, y in held_out]))
    assert estimates[0] < 0.1 and estimates[0] + 0.2 < estimates[1] < estimates[2] - 0.2, estimates
    assert max(estimates) < math.log(batch)
    assert estimates[1] < -d / 2 * math.log(1 - 0.6 ** 2)  # a lower bound of I(X;Y)


# --- the model -----------------------------------------------------------------------------------------------------

def test_unidirectional_encoder_reads_the_final_state_of_each_rows_own_length():
    torch.manual_seed(0)
    enc = SequenceEncoder(3, 6, 4, layers=1, bidirectional=False, dropout=0.0)
    x, lengths = torch.randn(4, 7, 3), torch.tensor([7, 1, 4, 2])
    _, (h_n, _) = enc.rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    assert torch.allclose(enc(x, lengths), enc.out(h_n[-1]), atol=1e-6)
    noisy = x.clone()
    noisy[2, 4:] = 100.0  # beyond row 2's length: ignored
    assert torch.allclose(enc(noisy, lengths)[2], enc(x, lengths)[2])
    bi = SequenceEncoder(3, 6, 4, layers=1, bidirectional=True, dropout=0.0)
    assert torch.allclose(bi(noisy, lengths)[2], bi(x, lengths)[2])


def test_prediction_gradient_reaches_the_av_inputs_at_word_positions_only():
    model, batch = _model(), _batch()
    model.eval()
    a = batch["acoustic"].clone().requires_grad_(True)
    v = batch["visual"].clone().requires_grad_(True)
    out = model(batch["input_ids"], batch["attention_mask"], a, v)
    assert out.prediction.shape == (12,)
    out.prediction.sum().backward()
    mask = batch["attention_mask"].bool()
    lengths = mask.sum(1)
    words = mask & (torch.arange(L) > 0) & (torch.arange(L) < (lengths - 1)[:, None])
    for grad in (a.grad, v.grad):
        per_position = grad.abs().sum(-1)
        assert bool((per_position[words] > 0).all())
        assert float(per_position[~words].abs().max()) == 0.0  # [CLS], [SEP] and padding carry nothing


def test_losses_are_task_plus_alpha_nce_minus_beta_ba_with_entropy_once_the_memory_is_full():
    model, batch = _model(ba_weight=0.3, cpc_weight=0.2), _batch(n=24)
    out = model(**_inputs(batch))
    first = losses(out, batch["label"], model.hp)
    assert float(first["entropy"]) == 0.0  # empty memory
    assert torch.allclose(first["task"], (out.prediction - batch["label"]).abs().mean())
    assert torch.allclose(first["lld"], out.lld["tv"] + out.lld["ta"])
    assert torch.allclose(first["nce"], out.nce["t"] + out.nce["a"] + out.nce["v"])
    model.remember(out, batch["label"])
    out = model(**_inputs(_batch(n=24, seed=1)))
    terms = losses(out, _batch(n=24, seed=1)["label"], model.hp)
    assert float(terms["entropy"].detach()) != 0.0
    expected = terms["task"] + 0.2 * terms["nce"] - 0.3 * (terms["lld"] + terms["entropy"])
    assert torch.allclose(terms["total"], expected)
    terms["total"].backward()
    assert model.acoustic_encoder.out.weight.grad is not None


def test_parameter_groups_partition_the_trainable_parameters_with_their_own_rates():
    model = _model()
    groups = parameter_groups(model)
    ids = {k: {id(p) for p in v} for k, v in groups.items()}
    assert not (ids["text"] & ids["main"]) and not (ids["text"] & ids["estimator"]) and not (ids["main"]
                                                                                              & ids["estimator"])
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert ids["text"] | ids["main"] | ids["estimator"] == trainable
    assert ids["estimator"] == {id(p) for p in model.estimators.parameters()}
    assert not any(p.requires_grad for p in model.entropy_projections.parameters())
    main, estimator = make_optimizers(model, HP)
    assert [g["lr"] for g in main.param_groups] == [HP["lr_text"], HP["lr_main"]]
    assert estimator.param_groups[0]["lr"] == HP["lr_estimator"]


def test_two_stage_step_updates_the_estimators_in_stage_1_and_everything_else_in_stage_2():
    model, batch = _model(), _batch(n=16)
    model.train()
    main_opt, est_opt = make_optimizers(model, HP)
    groups = parameter_groups(model)
    frozen = list(model.entropy_projections.parameters())

    def snapshot():
        return {k: [p.detach().clone() for p in v] for k, v in {**groups, "frozen": frozen}.items()}

    def changed(before, after):
        return {k: any(not torch.equal(a, b) for a, b in zip(before[k], after[k])) for k in before}

    before = snapshot()
    estimator_step(model, batch, est_opt, HP)  # stage 1
    after_stage_1 = snapshot()
    assert changed(before, after_stage_1) == {"text": False, "main": False, "estimator": True, "frozen": False}

    main_opt.zero_grad()  # stage 2 on the same batch
    out = model(**_inputs(batch))
    losses(out, batch["label"], HP)["total"].backward()
    main_opt.step()
    model.remember(out, batch["label"])
    assert changed(after_stage_1, snapshot()) == {"text": True, "main": True, "estimator": False, "frozen": False}
    assert model.memory.full("tv") and model.memory.full("ta")


def test_stage_1_raises_the_log_likelihood_of_its_batch():
    model, batch = _model(), _batch(n=16)
    model.eval()  # no dropout: the same representations before and after
    _, est_opt = make_optimizers(model, {**HP, "lr_estimator": 1e-2})
    first = float(estimator_step(model, batch, est_opt, HP))
    for _ in range(20):
        last = float(estimator_step(model, batch, est_opt, HP))
    assert last < first - 1.0  # -lld falls


@pytest.mark.parametrize("key,value", [("ba_pairs", ["tv", "xy"]), ("ba_pairs", [])])
def test_bad_pairs_fail_naming_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        _model(**{key: value})
