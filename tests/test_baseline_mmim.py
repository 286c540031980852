"""MMIM (Han et al., EMNLP 2021): its defining equations, that its MI estimators rise with the true mutual
information of a toy pair, its two-stage step, and that the a/v inputs reach the prediction."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch.nn.utils.rnn import pack_padded_sequence
from train_helpers import (
    CPU,
    D_A,
    D_V,
    REPO,
    assert_same_tensors,
    ddp_worker,
    free_port,
    load_model_states,
    make_cache,
    small_params,
    tiny_text_model,
)

from cpsl.baselines.mmim.estimators import (
    ConditionalGaussian,
    CPCPredictor,
    EntropyMemory,
    gaussian_log_likelihood,
    info_nce,
    mixture_entropy,
)
from cpsl.baselines.mmim.model import MMIM, SequenceEncoder, losses, parameter_groups
from cpsl.baselines.mmim.recipe import MMIMRecipe, Plateau, estimator_optimizer, estimator_step, main_optimizer
from cpsl.config import rows
from cpsl.config.schema import load_params
from cpsl.data.planted import planted_split
from cpsl.formats.run_folder import read_history
from cpsl.nn.text_encoder import load_text_encoder, tiny_deberta_config
from cpsl.train import loop

DA, DV, VOCAB, L = D_A, D_V, 1200, 10
# params.yaml's MOSI section with tiny widths and no dropout
SECTION = load_params(REPO / "params.yaml")["baselines"]["mmim"]["mosi"]
HP = {**SECTION, "acoustic_hidden": 8, "visual_hidden": 8, "acoustic_out": 8, "visual_out": 8, "fusion_hidden": 16,
      "fusion_dropout": 0.0}
TP = SECTION["train"]


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


def _trained(module, loss_fn, rho: float, batch: int, d: int, steps: int) -> torch.Generator:
    """Adam (lr 1e-2) on ``loss_fn(module, x, y)`` over fresh correlated batches; returns the data generator, to
    draw held-out pairs from."""
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    for _ in range(steps):
        x, y = _correlated(rho, batch, d, g)
        opt.zero_grad()
        loss_fn(module, x, y).backward()
        opt.step()
    return g


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
        q = ConditionalGaussian(d, d)
        g = _trained(q, lambda q, x, y: -q.log_likelihood(x, y), rho, 256, d, steps=300)
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
    neutral = torch.randn(5, 3, generator=g) * 100  # label 0: in neither component
    features = torch.cat([pos, neutral, neg])
    label = torch.cat([torch.full((40,), 1.5), torch.zeros(5), torch.full((30,), -0.5)])
    expected = 0.25 * sum(np.linalg.slogdet(np.cov(x.numpy().T, bias=True))[1] for x in (pos, neg))
    assert float(mixture_entropy(features, label)) == pytest.approx(expected, rel=1e-4)
    # spreading the samples by c raises the estimate by 1/4 * 2 * k * log c^2 = k log c
    raised = mixture_entropy(3 * features, label) - mixture_entropy(features, label)
    assert float(raised) == pytest.approx(3 * math.log(3), rel=1e-4)
    # no more samples than dimensions in one component: a singular covariance, no estimate, no NaN gradient
    few = features.clone().requires_grad_(True)
    few_label = torch.cat([torch.full((3,), 1.0), torch.zeros(42), torch.full((30,), -1.0)])
    h = mixture_entropy(few, few_label)
    h.backward()
    assert float(h.detach()) == 0.0 and torch.isfinite(few.grad).all()
    # samples that coincide (a/v all zero): a finite estimate, k/2 log(ridge), with a zero gradient
    same = torch.ones(20, 3, requires_grad=True)
    h = mixture_entropy(same, torch.cat([torch.ones(10), -torch.ones(10)]))
    h.backward()
    assert float(h.detach()) == pytest.approx(1.5 * math.log(1e-6), rel=1e-3) and float(same.grad.abs().max()) == 0


def test_entropy_memory_keeps_the_last_batches_and_survives_a_state_round_trip():
    memory = EntropyMemory(2)
    label = torch.tensor([1.0, -2.0, 0.0, 0.5])
    assert memory.history("tv") is None
    memory.push("tv", torch.full((4, 2), 1.0, requires_grad=True), label)
    assert memory.history("tv") is None  # not full yet
    memory.push("tv", torch.full((4, 2), 2.0), label)
    memory.push("tv", torch.full((4, 2), 3.0), label)  # drops the first batch
    features, labels = memory.history("tv")
    assert features[:, 0].tolist() == [2.0] * 4 + [3.0] * 4 and not features.requires_grad
    assert torch.equal(labels, torch.cat([label, label]))
    restored = EntropyMemory(2)
    restored.load_state_dict(torch.load(_saved(memory.state_dict()), weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(restored.history("tv"), memory.history("tv")))
    with pytest.raises(ValueError, match="entropy_memory"):
        EntropyMemory(3).load_state_dict(memory.state_dict())


def _saved(obj) -> io.BytesIO:
    """``obj`` through torch.save (what state/last.pt holds), ready for torch.load."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


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
        predictor = CPCPredictor(d, d)
        g = _trained(predictor, lambda g_z, x, y: info_nce(x, g_z(y), negatives), rho, batch, d, steps=200)
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
    model.remember(out.entropy_features, batch["label"])
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
    main, estimator = main_optimizer(model, TP), estimator_optimizer(model, HP)
    assert [g["lr"] for g in main.param_groups] == [TP["lr"], TP["lr_new_modules"]]
    assert [len(g["params"]) for g in main.param_groups] == [len(groups["text"]), len(groups["main"])]
    assert estimator.param_groups[0]["lr"] == HP["lr_estimator"]
    assert estimator.param_groups[0]["params"] == groups["estimator"]
    assert type(main) is torch.optim.Adam and main.defaults["weight_decay"] == TP["weight_decay"]


def test_two_stage_step_updates_the_estimators_in_stage_1_and_everything_else_in_stage_2():
    model, batch = _model(), _batch(n=16)
    model.train()
    main_opt, est_opt = main_optimizer(model, TP), estimator_optimizer(model, HP)
    groups = parameter_groups(model)
    frozen = list(model.entropy_projections.parameters())

    def snapshot():
        return {k: [p.detach().clone() for p in v] for k, v in {**groups, "frozen": frozen}.items()}

    def changed(before, after):
        return {k: any(not torch.equal(a, b) for a, b in zip(before[k], after[k])) for k in before}

    before = snapshot()
    estimator_step(model, batch, est_opt, TP["grad_clip"])  # stage 1
    assert all(p.grad is None for p in model.parameters())
    after_stage_1 = snapshot()
    assert changed(before, after_stage_1) == {"text": False, "main": False, "estimator": True, "frozen": False}

    main_opt.zero_grad()  # stage 2 on the same batch
    out = model(**_inputs(batch))
    losses(out, batch["label"], HP)["total"].backward()
    main_opt.step()
    model.remember(out.entropy_features, batch["label"])
    assert changed(after_stage_1, snapshot()) == {"text": True, "main": True, "estimator": False, "frozen": False}
    assert model.memory.full("tv") and model.memory.full("ta")


def test_stage_1_raises_the_log_likelihood_of_its_batch():
    model, batch = _model(), _batch(n=16)
    model.eval()  # no dropout: the same representations before and after
    est_opt = estimator_optimizer(model, {**HP, "lr_estimator": 1e-2})
    first = float(estimator_step(model, batch, est_opt, TP["grad_clip"]))
    for _ in range(20):
        last = float(estimator_step(model, batch, est_opt, TP["grad_clip"]))
    assert last < first - 1.0  # -lld falls


@pytest.mark.parametrize("key,value", [("ba_pairs", ["tv", "xy"]), ("ba_pairs", [])])
def test_bad_pairs_fail_naming_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        _model(**{key: value})


def test_validation_losses_leave_out_the_terms_that_need_the_training_memory():
    model, batch = _model(), _batch(n=16)
    params = rows.run_params(load_params(REPO / "params.yaml", overrides=["dataset=mosi"]), "MMIM")
    recipe = MMIMRecipe(model, params, "MMIM", CPU, losses_fn=losses)
    model.eval()
    valid = recipe.losses(model(**_inputs(batch)), batch)  # no "index": a validation batch
    assert set(valid) == {"task", "nce", "lld"}
    model.train()
    train = recipe.losses(model(**_inputs(batch)), {**batch, "index": torch.arange(16)})
    assert set(train) == {"total", "task", "nce", "lld", "entropy"}


def test_plateau_halves_the_rate_as_torchs_reduce_lr_on_plateau():
    values = [1.0, 0.9, 0.95, 0.95, 0.95, 0.8, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85, 0.79999]
    plateau = Plateau(patience=2, factor=0.5)
    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(reference, mode="min", patience=2, factor=0.5)
    scales = []
    for value in values:
        plateau.update(value)
        scheduler.step(value)
        scales.append(plateau.scale)
        assert plateau.scale == pytest.approx(reference.param_groups[0]["lr"])
    assert scales[-1] == 0.125  # three plateaus; 0.79999 is no improvement on 0.8 (relative threshold 1e-4)


# ------------------------------------------------------------------------------------------- the training loop
TINY = {"acoustic_out": 8, "visual_out": 8, "fusion_hidden": 16}  # entropy on 2 dims: batch 8 + memory suffice


def _loop_params(text, settings=None, **hyper):
    """small_params with MMIM's MOSI section: a 2-epoch schedule, tiny widths, ``hyper`` overrides."""
    schedule = {"epochs": 2, "batch_size": 8, "lr": 1e-3, "lr_new_modules": 1e-2, "warmup_ratio": 0.0}
    return small_params(text, **{f"baselines.mmim.mosi.train.{k}": v for k, v in schedule.items()},
                        **{f"baselines.mmim.mosi.{k}": v for k, v in {**TINY, **hyper}.items()}, **(settings or {}))


@pytest.fixture
def tiny_run(tmp_path):
    text = tiny_text_model(tmp_path / "text")
    return text, make_cache(tmp_path / "cache.h5", n_train=32, n_valid=8, learnable=True)


def _fit(params, cache, run_dir, text):
    return loop.fit(loop.RunSpec(params, "MMIM", 0, cache, run_dir, text), CPU)


def _recipe_state(run_dir):
    return torch.load(run_dir / "state" / "last.pt", weights_only=True)["recipe"]


def _stage1_steps(run_dir) -> int:
    return int(_recipe_state(run_dir)["estimator_optimizer"]["state"][0]["step"])


def test_stage_1_runs_every_step_or_once_per_epoch_over_its_share_of_the_batches(tiny_run, tmp_path):
    text, cache = tiny_run  # 32 segments, batch 8: 4 steps per epoch, 2 epochs
    assert _fit(_loop_params(text), cache, tmp_path / "step", text).exit_code == 0
    assert _stage1_steps(tmp_path / "step") == 8
    history = read_history(tmp_path / "step" / "history.csv")
    assert all(math.isfinite(row[f"train/{t}"]) for row in history for t in ("total", "task", "nce", "lld"))
    assert history[-1]["train/entropy"] != 0 and math.isnan(history[-1]["valid/entropy"])
    epoch = _loop_params(text, stage1="epoch", stage1_fraction=0.5)
    assert _fit(epoch, cache, tmp_path / "epoch", text).exit_code == 0
    assert _stage1_steps(tmp_path / "epoch") == 4  # ceil(0.5 x 4) batches per epoch
    assert _recipe_state(tmp_path / "epoch")["memory"]["batches"] == {}  # emptied at each epoch's end


def test_two_ddp_ranks_end_with_identical_weights_estimators_included(tiny_run, tmp_path):
    text, cache = tiny_run
    params = _loop_params(text, settings={"execution.nproc": 2})
    jobs = [("mmim", params, "MMIM", str(cache), str(tmp_path / "run"))]
    mp.start_processes(ddp_worker, args=(2, free_port(), jobs, str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    ranks = [load_model_states(tmp_path / f"mmim-rank{r}.pt") for r in (0, 1)]
    assert_same_tensors(*ranks)  # each rank's stage 1 saw other segments: their gradients were averaged
    assert any(k.startswith("estimators.") for k in ranks[0]) and _stage1_steps(tmp_path / "run") == 8
