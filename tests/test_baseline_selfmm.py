"""Self-MM (Yu et al., AAAI 2021) is what its paper defines, and its a/v path and per-segment state work
(cpsl.baselines.selfmm: model, labels, recipe).

1. The ULGM's rule on toy batches: class centres (Eq. 5-6), relative distance (Eq. 7-8), a segment whose unimodal
   representation sits nearer the positive centre gets a higher label by exactly Eq. 11's amount, clipping to
   [-H, H], the momentum update from the second epoch with Eq. 12's weights (and its closed form), the official
   rule as the alternative, duplicates in a gathered batch, and a state_dict round trip.
2. The weighted multi-task loss (Eq. 13), which refuses to run without the generated labels.
3. The model: the gradient of the prediction reaches the a/v inputs at the word positions only; each unimodal head
   reads its own modality; the gathered sLSTM end state is the packed one; trimming changes nothing.
4. In the real loop on 2 gloo ranks: the ULGM's per-segment state is identical on both ranks, every subtask's
   labels moved. (The row's contract, planted signal, SIGTERM/SIGKILL resume with the ULGM state, params
   validation and the a/v mark: tests/test_row_contract.py.)
"""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch.nn.utils.rnn import pack_padded_sequence
from train_helpers import (
    REPO,
    assert_same_tensors,
    free_port,
    load_model_states,
    make_cache,
    schedule_settings,
    small_params,
    tiny_text_model,
)

from cpsl.baselines.selfmm import recipe as selfmm_recipe
from cpsl.baselines.selfmm.labels import REPRESENTATIONS, UnimodalLabels, momentum
from cpsl.baselines.selfmm.model import (
    LOSS_TERMS,
    LastStateLSTM,
    SelfMM,
    attach_unimodal_labels,
    parameter_groups,
    selfmm_losses,
)
from cpsl.baselines.selfmm.recipe import SelfMMRecipe
from cpsl.config.schema import parse_yaml
from cpsl.data.planted import planted_split
from cpsl.nn.text_encoder import load_text_encoder, tiny_deberta_config
from cpsl.nn.tokens import word_positions
from cpsl.train import loop

DA, DV, VOCAB, L = 5, 4, 1200, 10
E1, E2 = torch.eye(4)[0], torch.eye(4)[1]


def _ulgm(y_m, stored: dict, rule="paper", bound=3.0) -> UnimodalLabels:
    """A ULGM over len(y_m) segments with d = 4 for every representation and the given stored F^g."""
    ulgm = UnimodalLabels(len(y_m), {i: 4 for i in REPRESENTATIONS}, rule=rule, bound=bound)
    ulgm.init_labels(torch.tensor(y_m))
    ulgm.update(torch.arange(len(y_m)), {i: stored.get(i, stored["m"]) for i in REPRESENTATIONS}, epoch=0)
    return ulgm


def _alpha_paper(f, c_pos, c_neg, d=4):
    """Eq. 7-8 written out on plain floats (the test's own arithmetic, not the module's)."""
    d_pos = sum((a - b) ** 2 for a, b in zip(f, c_pos)) / math.sqrt(d)
    d_neg = sum((a - b) ** 2 for a, b in zip(f, c_neg)) / math.sqrt(d)
    return (d_neg - d_pos) / (d_pos + 1e-8)


# ------------------------------------------------------------------------------------------------ ULGM rule
def _toy():
    """Segments 0-2 positive, 3-5 negative; every stored representation is +e1 (positive) or -e1 (negative), so
    C^p = e1 and C^n = -e1 in every modality. Segments 0 and 1 share y_m = 1."""
    y_m = [1.0, 1.0, 0.5, -1.0, -2.0, -0.5]
    stored = torch.stack([E1, E1, E1, -E1, -E1, -E1])
    return y_m, _ulgm(y_m, {"m": stored})


def test_centres_are_class_means_of_the_stored_representations():
    _, ulgm = _toy()
    for i in REPRESENTATIONS:
        c_pos, c_neg = ulgm.centres(i)
        assert torch.equal(c_pos, E1) and torch.equal(c_neg, -E1)


def test_nearer_the_positive_centre_means_a_higher_label_by_exactly_eq_11():
    _, ulgm = _toy()
    index = torch.tensor([0, 1])
    f_m = torch.stack([0.5 * E1, 0.5 * E1])
    f_t = torch.stack([0.5 * E1, 0.25 * E1])  # segment 0's text sits nearer the positive centre
    feats = {"m": f_m, "t": f_t, "a": f_m, "v": -f_m}
    new = ulgm.generate(index, feats)

    alpha_m = _alpha_paper([0.5, 0, 0, 0], [1, 0, 0, 0], [-1, 0, 0, 0])
    alpha_t = [_alpha_paper([0.5, 0, 0, 0], [1, 0, 0, 0], [-1, 0, 0, 0]),
               _alpha_paper([0.25, 0, 0, 0], [1, 0, 0, 0], [-1, 0, 0, 0])]
    assert alpha_m == pytest.approx(8.0) and alpha_t[1] == pytest.approx(16 / 9)
    y_m = 1.0
    expected = [y_m + (a - alpha_m) / 2 * (y_m + alpha_m) / alpha_m for a in alpha_t]  # Eq. 11
    np.testing.assert_allclose(new["t"].numpy(), expected, rtol=1e-6)
    # the same y_m and F_m^*: the gap is (alpha_t0 - alpha_t1)/2 * (y_m + alpha_m)/alpha_m = 3.5, nothing else
    assert float(new["t"][0] - new["t"][1]) == pytest.approx(3.5, rel=1e-6)
    # a representation as far from the centres as F_m^* keeps y_m; one mirrored through the origin flips it
    np.testing.assert_allclose(new["a"].numpy(), [1.0, 1.0], rtol=1e-6)
    assert (new["v"] < new["a"]).all()


def test_generated_labels_are_clipped_to_plus_minus_H():
    _, ulgm = _toy()
    index = torch.tensor([0])
    # alpha_m ~ 0 (F_m^* equidistant from both centres): Eq. 11 divides by ~eps
    feats = {"m": E2[None], "t": 0.9 * E1[None], "a": -0.9 * E1[None], "v": E2[None]}
    new = ulgm.generate(index, feats)
    assert float(new["t"]) == 3.0 and float(new["a"]) == -3.0
    _, narrow = _toy()
    narrow.bound = 2.0
    assert float(narrow.generate(index, feats)["t"]) == 2.0


def test_momentum_update_from_the_second_epoch_with_the_papers_weights():
    y_m, ulgm = _toy()
    index = torch.tensor([0, 1])
    feats = {"m": torch.stack([0.5 * E1] * 2), "t": torch.stack([0.5 * E1, 0.25 * E1]),
             "a": torch.stack([0.25 * E1] * 2), "v": torch.stack([0.5 * E2] * 2)}
    ulgm.update(index, feats, epoch=0)  # the paper's epoch 1: labels stay y_m, only F^g is stored
    for s in ("t", "a", "v"):
        assert torch.equal(ulgm.targets(index)[s], torch.tensor(y_m[:2]))
    assert torch.equal(ulgm.features_t[1], 0.25 * E1)

    for epoch in (1, 2, 5):  # the paper's i = 2, 3, 6
        before = ulgm.targets(index)
        generated = ulgm.generate(index, feats)
        ulgm.update(index, feats, epoch=epoch)
        i = epoch + 1
        for s in ("t", "a", "v"):
            expected = (i - 1) / (i + 1) * before[s] + 2 / (i + 1) * generated[s]
            torch.testing.assert_close(ulgm.targets(index)[s], expected, rtol=0, atol=1e-6)
    assert float(ulgm.targets(index)["t"][1]) < 0  # segment 1's text label has moved away from y_m = 1
    assert torch.equal(ulgm.targets(index)["m"], torch.tensor(y_m[:2]))  # y_m itself never changes


def test_momentum_is_the_papers_weighted_sum_of_all_generated_labels():
    """Eq. 12 unrolled: after n epochs the label generated in epoch j has weight 2j / (n(n+1))."""
    generated = torch.tensor([0.7, -1.2, 2.5, 0.1, -0.4, 1.9])  # y^1 = y_m, then epochs 2..6
    label = generated[0]
    for n in range(2, len(generated) + 1):
        label = momentum(label, generated[n - 1], n)
        weights = torch.arange(1, n + 1, dtype=torch.float32) * 2 / (n * (n + 1))
        assert float(label) == pytest.approx(float((weights * generated[:n]).sum()), abs=1e-6)


def test_official_rule_counts_zero_as_positive_and_uses_the_plain_norm():
    y_m = [1.0, 0.0, -1.0]
    stored = torch.stack([E1, 3 * E1, -E1])
    paper, official = _ulgm(y_m, {"m": stored}), _ulgm(y_m, {"m": stored}, rule="official")
    assert torch.equal(paper.centres("m")[0], E1)  # the zero label is in neither class (Eq. 5: y > 0)
    assert torch.equal(official.centres("m")[0], 2 * E1)  # official: y >= 0
    f = torch.stack([1.5 * E1])
    assert float(official.relative_distance(f, "m")) == pytest.approx((2.5 - 0.5) / 0.5)  # ||.||_2, not squared
    assert float(paper.relative_distance(f, "m")) == pytest.approx(_alpha_paper([1.5, 0, 0, 0], [1, 0, 0, 0],
                                                                                [-1, 0, 0, 0]))
    with pytest.raises(ValueError, match="ulgm_rule"):
        UnimodalLabels(3, {i: 4 for i in REPRESENTATIONS}, rule="mmsa")


def test_an_empty_class_has_a_zero_centre_not_nan():
    ulgm = _ulgm([1.0, 2.0], {"m": torch.stack([E1, E2])})
    c_pos, c_neg = ulgm.centres("t")
    assert torch.equal(c_neg, torch.zeros(4)) and torch.equal(c_pos, (E1 + E2) / 2)
    new = ulgm.generate(torch.tensor([0]), {i: 0.5 * E1[None] for i in REPRESENTATIONS})
    assert all(torch.isfinite(v).all() for v in new.values())


def test_a_segment_twice_in_a_gathered_batch_is_written_from_its_first_occurrence():
    """DistributedSampler pads the last batches by repeating segments, so an all-gathered batch may hold one segment
    twice with different representations (other rank, other dropout): the state must not depend on the order."""
    _, twice = _toy()
    _, once = _toy()
    first, second = 0.5 * E1, 0.25 * E1
    twice.update(torch.tensor([1, 1]), {i: torch.stack([first, second]) for i in REPRESENTATIONS}, epoch=1)
    once.update(torch.tensor([1]), {i: first[None] for i in REPRESENTATIONS}, epoch=1)
    for name, value in once.state_dict().items():
        assert torch.equal(value, twice.state_dict()[name]), name


def test_state_dict_round_trip_continues_identically():
    _, ulgm = _toy()
    rng = torch.Generator().manual_seed(0)
    batches = [(torch.tensor(ix), {i: torch.randn(len(ix), 4, generator=rng) for i in REPRESENTATIONS})
               for ix in ([0, 3], [1, 4, 5], [2])]
    for index, feats in batches:
        ulgm.update(index, feats, epoch=1)
    buffer = io.BytesIO()
    torch.save(ulgm.state_dict(), buffer)
    buffer.seek(0)
    restored = UnimodalLabels(6, {i: 4 for i in REPRESENTATIONS})
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert set(ulgm.state_dict()) == {"labels", *(f"features_{i}" for i in REPRESENTATIONS)}
    for index, feats in batches:
        ulgm.update(index, feats, epoch=2)
        restored.update(index, feats, epoch=2)
    for name, value in ulgm.state_dict().items():
        assert torch.equal(value, restored.state_dict()[name]), name
    assert not torch.equal(ulgm.labels[1], ulgm.labels[0])  # the state did move (else the round trip proves little)


# ------------------------------------------------------------------------------------------------ loss (Eq. 13)
def _out(pred_m, uni, uni_labels=None):
    from cpsl.baselines.selfmm.model import SelfMMOutput

    t = torch.tensor
    out = SelfMMOutput(prediction=t(pred_m), uni={s: t(v) for s, v in uni.items()}, features={})
    return attach_unimodal_labels(out, {s: t(v) for s, v in uni_labels.items()}) if uni_labels else out


def test_loss_weighs_each_subtask_by_tanh_of_its_label_gap():
    label = torch.tensor([1.0, -2.0])
    out = _out([0.5, -1.0], {"t": [0.0, 0.0], "a": [2.0, -2.0], "v": [1.0, 1.0]},
               {"t": [1.0, -2.0], "a": [3.0, -2.0], "v": [0.0, 1.0]})
    losses = selfmm_losses(out, label, {})
    assert tuple(losses) == LOSS_TERMS
    assert float(losses["task"]) == pytest.approx((0.5 + 1.0) / 2)
    assert float(losses["uni_t"]) == 0.0  # y_t = y_m: weight tanh(0) = 0
    assert float(losses["uni_a"]) == pytest.approx((math.tanh(2.0) * 1.0 + 0.0) / 2)
    assert float(losses["uni_v"]) == pytest.approx((math.tanh(1.0) * 1.0 + math.tanh(3.0) * 0.0) / 2)
    assert float(losses["total"]) == pytest.approx(sum(float(losses[k]) for k in LOSS_TERMS[1:]))


def test_loss_refuses_to_run_without_the_generated_labels():
    with pytest.raises(ValueError, match="ULGM"):
        selfmm_losses(_out([0.0], {"t": [0.0], "a": [0.0], "v": [0.0]}), torch.tensor([1.0]), {})


# ------------------------------------------------------------------------------------------------ the model
# small widths and no dropout, so that gradients are exact zeros where they should be
HP = {"a_lstm_hidden": 6, "v_lstm_hidden": 6, "a_lstm_layers": 1, "v_lstm_layers": 1, "a_lstm_dropout": 0.0,
      "v_lstm_dropout": 0.0, "a_out": 4, "v_out": 4, "post_m_dim": 8, "post_t_dim": 8, "post_a_dim": 4,
      "post_v_dim": 4, "post_m_dropout": 0.0, "post_t_dropout": 0.0, "post_a_dropout": 0.0, "post_v_dropout": 0.0,
      "head_hidden_layers": 1, "ulgm_rule": "paper", "label_bound": 3.0, "lr_a": 1e-3, "lr_v": 1e-4,
      "wd_a": 0.01, "wd_v": 1e-3, "wd_other": 1e-3}
TRAIN = {"lr": 5e-5, "lr_new_modules": 1e-3, "weight_decay": 1e-3}


def _model(seed=0, **hp):
    torch.manual_seed(seed)
    return SelfMM(load_text_encoder(tiny_deberta_config(VOCAB), pretrained=False), DA, DV, {**HP, **hp})


def _batch(n=6, seed=0, signal=("visual",), seq_len=L):
    arrays = planted_split(np.random.default_rng(seed), n, seq_len, (DA, DV), VOCAB, signal)
    batch = {"input_ids": torch.as_tensor(arrays["input_ids"]),
             "attention_mask": torch.as_tensor(arrays["attention_mask"]).long(),
             "acoustic": torch.as_tensor(arrays["acoustic"]), "visual": torch.as_tensor(arrays["visual"])}
    return batch, torch.as_tensor(arrays["label"])


def _input_gradients(model, batch, output=lambda out: out.prediction):
    batch = {**batch, "acoustic": batch["acoustic"].clone().requires_grad_(),
             "visual": batch["visual"].clone().requires_grad_()}
    output(model(**batch)).sum().backward()
    # a stream the output does not depend on gets no gradient at all (None)
    return {m: (batch[m].grad if batch[m].grad is not None else torch.zeros_like(batch[m])).abs().sum(-1)
            for m in ("acoustic", "visual")}  # (B, L)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_prediction_gradient_reaches_av_at_every_word_position_only(mode):
    batch, _ = _batch()
    model = _model().train(mode == "train")
    words = word_positions(batch["attention_mask"])
    for stream, g in _input_gradients(model, batch).items():
        assert (g[words] > 0).all(), f"{stream}: some word position does not reach the prediction"
        assert (g[~words] == 0).all(), f"{stream}: [CLS]/[SEP]/padding must not reach the prediction"


def test_each_unimodal_head_reads_only_its_own_modality():
    batch, _ = _batch()
    model = _model().eval()
    for s, stream in (("a", "acoustic"), ("v", "visual")):
        model.zero_grad()
        grads = _input_gradients(model, batch, lambda out, s=s: out.uni[s])
        other = "visual" if stream == "acoustic" else "acoustic"
        assert float(grads[stream].sum()) > 0 and float(grads[other].sum()) == 0
    grads = _input_gradients(model, batch, lambda out: out.uni["t"])
    assert all(float(g.sum()) == 0 for g in grads.values())


@pytest.mark.parametrize("layers", [1, 2])
def test_features_are_the_first_relu_layer_of_each_head(layers):
    batch, _ = _batch()
    out = _model(head_hidden_layers=layers).eval()(**batch)
    assert {i: tuple(f.shape) for i, f in out.features.items()} == {"m": (6, 8), "t": (6, 8), "a": (6, 4),
                                                                    "v": (6, 4)}
    assert all((f >= 0).all() for f in out.features.values())
    assert out.prediction.shape == (6,) and all(u.shape == (6,) for u in out.uni.values())
    with pytest.raises(ValueError, match="head_hidden_layers"):
        _model(head_hidden_layers=3)


def test_gathered_end_state_equals_the_packed_lstm_end_state():
    torch.manual_seed(0)
    lstm = LastStateLSTM(3, 5, 2, layers=2, dropout=0.0).eval()
    x, lengths = torch.randn(4, 7, 3), torch.tensor([7, 1, 4, 2])
    x = x * (torch.arange(7)[None, :, None] < lengths[:, None, None])
    _, (h, _) = lstm.rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    torch.testing.assert_close(lstm(x, lengths), lstm.out(h[-1]), rtol=0, atol=1e-6)


def test_trimming_padding_changes_no_prediction():
    batch, _ = _batch(seq_len=16)
    model = _model().eval()
    with torch.no_grad():
        trimmed = model(**batch).prediction
        model.trim_padding = False
        full = model(**batch).prediction
    torch.testing.assert_close(trimmed, full, rtol=0, atol=1e-5)


def test_a_missing_hyper_parameter_is_named():
    hp = {k: v for k, v in HP.items() if k != "post_t_dim"}
    with pytest.raises(KeyError, match="post_t_dim"):
        SelfMM(load_text_encoder(tiny_deberta_config(VOCAB), pretrained=False), DA, DV, hp)
    with pytest.raises(KeyError, match="lr_v"):
        parameter_groups(_model(), {k: v for k, v in HP.items() if k != "lr_v"}, TRAIN)


def test_parameter_groups_cover_every_parameter_once_with_the_official_rates():
    model = _model()
    groups = parameter_groups(model, HP, TRAIN)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    text, text_no_decay, a, v, other = groups
    assert (text["lr"], text["weight_decay"], text_no_decay["lr"], text_no_decay["weight_decay"]) == (5e-5, 1e-3,
                                                                                                      5e-5, 0.0)
    assert text_no_decay["params"] and all(p.dim() == 1 for p in text_no_decay["params"])  # biases, LayerNorm
    assert (a["lr"], a["weight_decay"], v["lr"], v["weight_decay"]) == (1e-3, 0.01, 1e-4, 1e-3)
    assert (other["lr"], other["weight_decay"]) == (1e-3, 1e-3)
    assert {id(p) for p in a["params"]} == {id(p) for p in model.encoders["a"].parameters()}
    assert {id(p) for p in other["params"]} == {id(p) for p in model.heads.parameters()}


def test_a_short_training_run_moves_the_unimodal_labels_and_stays_finite():
    """The pieces together as Algorithm 1 orders them: loss with the labels as they are, backward, step, then the
    ULGM update from the batch's detached representations."""
    batch, label = _batch(n=16, seed=3, signal=("visual",))
    model = _model(seed=1).train()
    ulgm = UnimodalLabels(16, model.feature_dims)
    ulgm.init_labels(label)
    optimizer = torch.optim.Adam(parameter_groups(model, HP, TRAIN))
    order = torch.Generator().manual_seed(0)
    first_epoch_uni = None
    for epoch in range(3):
        for index in torch.randperm(16, generator=order).split(8):
            out = model(**{k: v[index] for k, v in batch.items()})
            losses = selfmm_losses(attach_unimodal_labels(out, ulgm.targets(index)), label[index], HP)
            optimizer.zero_grad()
            losses["total"].backward()
            optimizer.step()
            ulgm.update(index, out.features, epoch)
            if epoch == 0:
                first_epoch_uni = float((losses["uni_t"] + losses["uni_a"] + losses["uni_v"]).detach())
                assert first_epoch_uni == 0.0  # y_s = y_m in the first epoch: every W_s is 0
    labels = ulgm.labels
    assert torch.isfinite(labels).all() and labels.abs().max() <= 3.0
    assert torch.equal(labels[0], label)
    assert (labels[1:] != label).any(1).all()  # every subtask's labels moved in epochs 2-3
    assert all(float(ulgm.stored(i).abs().sum()) > 0 for i in REPRESENTATIONS)


# ------------------------------------------------------------------------------------------------ params
def test_the_params_sections_build_the_model_the_official_config_describes():
    params = parse_yaml((REPO / "params.yaml").read_text())["baselines"]["selfmm"]
    text = load_text_encoder(tiny_deberta_config(VOCAB), pretrained=False)
    for dataset, widths in (("mosi", {"m": 128, "t": 64, "a": 16, "v": 32}),
                            ("mosei", {"m": 128, "t": 32, "a": 16, "v": 16})):
        model = SelfMM(text, DA, DV, params[dataset])
        assert model.feature_dims == widths
        assert model.encoders["v"].rnn.hidden_size == (64 if dataset == "mosi" else 32)
        assert model.heads["m"].project.in_features == 32 + 16 + 32  # [F_t; F_a; F_v]


# ------------------------------------------------------------------------------------------------ in the loop
class _KeepLabels(SelfMMRecipe):
    def end_epoch(self, epoch, row):
        self.model.ulgm_state = {k: v.clone() for k, v in self.ulgm.state_dict().items()}  # read by the worker


def _ddp_worker(rank, world_size, port, params, cache, run_dir, text, out):
    """A spawned gloo rank: fit SELFMM, save this rank's weights and ULGM state."""
    from train_helpers import _join_gloo, _save_weights

    from cpsl.train.distributed import shutdown

    selfmm_recipe.RECIPE = _KeepLabels
    ctx = _join_gloo(rank, world_size, port)
    try:
        result = loop.fit(loop.RunSpec(params, "SELFMM", 0, cache, run_dir, text), ctx)
        assert result.exit_code == 0
        _save_weights(result.model, out / f"rank{rank}.pt")
        torch.save(result.model.ulgm_state, out / f"ulgm{rank}.pt")
    finally:
        shutdown(ctx)


def test_the_ulgm_state_is_identical_on_every_ddp_rank(tmp_path):
    text = tiny_text_model(tmp_path / "text")
    # 3 epochs: the labels move from the second on
    schedule = {"epochs": 3, "batch_size": 6, "lr": 5e-4, "lr_new_modules": 5e-3, "warmup_ratio": 0.0}
    params = small_params(text, **schedule_settings("SELFMM", **schedule), **{"execution.nproc": 2})
    # 31 segments over 2 ranks: DistributedSampler repeats one, so a gathered batch holds it twice
    cache = make_cache(tmp_path / "cache.h5", n_train=31, n_valid=8, learnable=True)
    mp.start_processes(_ddp_worker, args=(2, free_port(), params, cache, tmp_path / "run", text, tmp_path),
                       nprocs=2, join=True, start_method="spawn")
    states = [torch.load(tmp_path / f"ulgm{r}.pt", weights_only=True) for r in (0, 1)]
    assert_same_tensors(states[0], states[1])
    labels = states[0]["labels"]
    assert (labels[1:] != labels[:1]).any(1).all()  # every subtask's labels moved, from both ranks' segments
    assert (states[0]["features_v"].abs().sum(1) > 0).all()  # every segment's representation was stored
    assert_same_tensors(load_model_states(tmp_path / "rank0.pt"), load_model_states(tmp_path / "rank1.pt"))
