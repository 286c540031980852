"""Issue 7: the acoustic/visual path reaches the prediction, evaluation does not depend on batching,
[CLS]/[SEP] stay out of every a/v statistic, and gradient modulation touches only the AME encoders."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cpsl.config.ablations import switches_for
from cpsl.config.schema import load_params, set_dotted, validate_params
from cpsl.data.planted import planted_split
from cpsl.model.losses import total_loss
from cpsl.model.network import build_model
from cpsl.model.recipe import LossStep
from cpsl.nn.inference import run_inference
from cpsl.nn.normalize import batch_min_max
from cpsl.nn.text_encoder import tiny_deberta_config
from cpsl.nn.tokens import word_positions
from cpsl.train.distributed import DistContext
from cpsl.train.recipe import make_optimizer
from cpsl.train.step import EpochSums, StepBody, Stepper

DA, DV, VOCAB, L = 5, 4, 1200, 10


def _params(**overrides) -> dict:
    params = load_params(overrides=["dataset=mosi"])  # the paper's schedule (the demo has its own, demo.train)
    for key, value in {"model.intermediate_dim": 16, "model.fusion_dim": 16, **overrides}.items():
        set_dotted(params, key, value)
    return validate_params(params, "test params")


def _model(params, ablation="A6", seed=0):
    torch.manual_seed(seed)
    return build_model(params, switches_for(ablation), DA, DV, tiny_deberta_config(VOCAB), pretrained=False)


def _arrays(n=12, seed=0, signal=("visual",)):
    return planted_split(np.random.default_rng(seed), n, L, (DA, DV), VOCAB, signal)


def _batch(arrays, rows=None):
    rows = slice(None) if rows is None else rows
    return {"input_ids": torch.as_tensor(arrays["input_ids"][rows]),
            "attention_mask": torch.as_tensor(arrays["attention_mask"][rows]).long(),
            "acoustic": torch.as_tensor(arrays["acoustic"][rows]), "visual": torch.as_tensor(arrays["visual"][rows])}


def _input_gradients(model, batch):
    batch = {**batch, "acoustic": batch["acoustic"].clone().requires_grad_(),
             "visual": batch["visual"].clone().requires_grad_()}
    model(**batch).prediction.sum().backward()
    return {m: batch[m].grad.abs().sum(-1) for m in ("acoustic", "visual")}  # (B, L)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_prediction_depends_on_av_at_every_word_position(mode):
    arrays = _arrays()
    batch = _batch(arrays)
    model = _model(_params(**{"model.encoder_dropout": 0.0, "model.classifier_dropout": 0.0}))
    if mode == "eval":  # kept statistics that cover the batch: a value clamped to [0, 1] has no gradient, by design
        words = word_positions(batch["attention_mask"])
        for m, key in (("a", "acoustic"), ("v", "visual")):
            lo, hi = batch_min_max(batch[key], words)
            model.normalizers[m].running_min.copy_(lo - 1)
            model.normalizers[m].running_max.copy_(hi + 1)
    model.train(mode == "train")
    grads = _input_gradients(model, batch)
    words = word_positions(batch["attention_mask"])
    for stream, g in grads.items():
        assert (g[words] > 0).all(), f"{stream}: some word position does not reach the prediction"
        assert (g[~words] == 0).all(), f"{stream}: [CLS]/[SEP]/padding must carry no a/v signal"


def test_with_cls_pooling_av_never_reach_the_prediction():
    """Why the default is mean pooling: H = T + beta P_av is formed after the last text layer, so with [CLS]
    pooling the task head sees only position 0, where P_av is zero (the bug issue 7 reports)."""
    model = _model(_params(**{"model.pooling": "cls"})).eval()
    grads = _input_gradients(model, _batch(_arrays()))
    assert all(float(g.abs().sum()) == 0.0 for g in grads.values())


def test_text_only_row_t0_ignores_av_and_full_model_does_not():
    arrays = _arrays()
    batch = _batch(arrays)
    shuffled = {**batch, "visual": batch["visual"].flip(0), "acoustic": batch["acoustic"].flip(0)}
    t0 = _model(_params(), "T0").eval()
    assert torch.equal(t0(**batch).prediction, t0(**shuffled).prediction)
    a6 = _model(_params(), "A6").eval()
    assert not torch.allclose(a6(**batch).prediction, a6(**shuffled).prediction)


def _trained_normalizers(model, arrays):
    model.train()
    with torch.no_grad():
        for start in range(0, len(arrays["label"]), 4):  # a few training batches set the running min/max
            model(**_batch(arrays, slice(start, start + 4)))
    return model.eval()


def test_running_statistics_make_eval_independent_of_batching():
    params = _params()
    arrays = _arrays(n=16, seed=1)
    model = _trained_normalizers(_model(params), arrays)
    assert int(model.normalizers["v"].num_batches_tracked) == 4
    with torch.no_grad():
        alone = np.array([float(model(**_batch(arrays, slice(i, i + 1))).prediction) for i in range(16)])
    rng = np.random.default_rng(0)
    for size in (3, 5, 16):
        order = rng.permutation(16)
        shuffled = {k: (np.asarray(v)[order] if k != "segment_id" else v) for k, v in arrays.items()}
        pred = run_inference(model, shuffled, size, torch.device("cpu")).prediction
        np.testing.assert_allclose(pred, alone[order], rtol=0, atol=1e-5)

    # the paper's literal per-batch mode: the same checkpoint, but a segment's prediction moves with its neighbours
    literal = _model(_params(**{"model.eval_norm": "batch"}))
    literal.load_state_dict(model.state_dict())
    literal.eval()
    with torch.no_grad():
        alone_b = np.array([float(literal(**_batch(arrays, slice(i, i + 1))).prediction) for i in range(16)])
    in_batch = run_inference(literal, arrays, 8, torch.device("cpu")).prediction
    assert np.abs(in_batch - alone_b).max() > 1e-3


def test_running_statistics_travel_in_the_state_dict():
    model = _trained_normalizers(_model(_params()), _arrays(n=8))
    state = model.state_dict()
    assert {"normalizers.a.running_min", "normalizers.v.running_max", "normalizers.v.num_batches_tracked"} <= set(state)
    fresh = _model(_params(), seed=5)
    fresh.load_state_dict(state)
    batch = _batch(_arrays(n=4, seed=9))
    assert torch.equal(fresh.eval()(**batch).prediction, model(**batch).prediction)


def test_special_tokens_and_padding_are_out_of_every_av_statistic():
    """[CLS]/[SEP]/padding features do not enter min-max, SL, unimodal means, reconstruction or diversity."""
    params = _params(**{"model.encoder_dropout": 0.0, "model.classifier_dropout": 0.0})
    arrays = _arrays(n=6, seed=2)
    batch = _batch(arrays)
    words = word_positions(batch["attention_mask"])
    poisoned = dict(batch)
    for key in ("acoustic", "visual"):
        x = batch[key].clone()
        x[~words] = 1e3  # huge values where the aligner writes zeros
        poisoned[key] = x
    label = torch.as_tensor(arrays["label"])
    outs = []
    for b in (batch, poisoned):
        model = _model(params, "C2").train()  # training mode: per-batch min-max; AME + SL on
        torch.manual_seed(3)  # the same AME noise for both inputs
        out = model(**b)
        outs.append((out, total_loss(out, label, params["loss"], switches_for("C2"))))
    (o1, l1), (o2, l2) = outs
    assert torch.equal(o1.prediction, o2.prediction)
    for m in ("a", "v"):
        assert torch.equal(o1.uni[m], o2.uni[m]) and torch.equal(o1.inputs[m], o2.inputs[m])
    for term in ("stat", "recon", "div", "uni", "task"):
        assert torch.equal(l1[term], l2[term]), term


class _RecordingOptimizer:
    """Stands in for AdamW inside the training step: records the gradients it would apply."""

    def __init__(self, model):
        self.model, self.grads = model, None

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)

    def step(self):
        self.grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.grad is not None}


def _step_grads(params, ablation, batch, label):
    model = _model(params, ablation, seed=0)
    opt = _RecordingOptimizer(model)
    sched = type("S", (), {"step": lambda self: None})()
    ctx = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    torch.manual_seed(11)  # the same AME noise in both runs
    switches = switches_for(ablation)
    body = StepBody(LossStep(model, params["loss"], switches), model, params, switches, ctx, use_bf16=False)
    out, _ = Stepper("eager", body, opt, sched, ctx, seed=0).step(
        {**batch, "label": label}, EpochSums(ctx.device), epoch=0, step=0, global_step=0, stop_requested=False)
    return opt.grads, out.tele.to_host()


def test_train_step_scales_only_the_ame_encoder_gradients():
    params = _params(**{"model.encoder_dropout": 0.0, "model.classifier_dropout": 0.0})
    arrays = _arrays(n=8, seed=4, signal=("visual", "text"))
    batch, label = _batch(arrays), torch.as_tensor(arrays["label"])
    plain, tele_plain = _step_grads(params, "A1", batch, label)     # AME, no modulation
    modulated, tele = _step_grads(params, "A2", batch, label)       # AME + GM (Eq. 5)
    assert not tele_plain["active"] and tele["active"]
    assert min(tele["c_a"], tele["c_v"]) < 1.0  # one modality is the better one: its c is below 1
    assert plain.keys() == modulated.keys()
    scaled = 0
    for name, g in plain.items():
        if name.startswith("ame.a."):
            torch.testing.assert_close(modulated[name], g * tele["c_a"], rtol=1e-5, atol=1e-9)
            scaled += 1
        elif name.startswith("ame.v."):
            torch.testing.assert_close(modulated[name], g * tele["c_v"], rtol=1e-5, atol=1e-9)
            scaled += 1
        else:  # text encoder, fusion, injection, heads, decoders: untouched
            assert torch.equal(modulated[name], g), name
    assert scaled == 16  # f_mu and f_var (2 Linear layers each, weight + bias) per modality


def test_separate_learning_rate_for_new_modules():
    params = _params(**{"train.lr_new_modules": 1e-3})
    model = _model(params)
    groups = make_optimizer(model, params["train"]).param_groups
    assert [g["lr"] for g in groups] == [1e-5, 1e-3]
    text_ids = {id(p) for p in model.text_encoder.parameters()}
    assert {id(p) for p in groups[0]["params"]} == text_ids
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
    same = make_optimizer(model, _params(**{"train.lr_new_modules": None})["train"]).param_groups  # the paper's
    assert [g["lr"] for g in same] == [1e-5, 1e-5]
