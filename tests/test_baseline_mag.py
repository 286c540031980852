"""MAG (cpsl.baselines.mag) is what its paper defines, and its a/v path works.

1. The norm-ratio scaling (MAG-3): the shift alpha*H never has a larger norm than beta*||Z||, equals it when H is
   large, and leaves H unscaled (alpha = 1) when H is small.
2. The gate (MAG-1, 2, 4) computes the paper's formula, checked against a hand computation with its own weights;
   zero a/v features shift by b_H alone.
3. It sits where configured: the inputs of the layers before ``injection_layer`` do not depend on a/v, those from
   it on do; on a BERT-architecture encoder (the demo's MiniLM kind) and on DeBERTa-v2/v3.
4. The gradient of the prediction reaches the acoustic and visual inputs, at the word positions.
(The row's contract, planted signal, resume, params validation and the a/v mark: tests/test_row_contract.py.)
"""
from __future__ import annotations

import pytest
import torch
import transformers
from train_helpers import (
    D_A,
    D_V,
    REPO,
    VOCAB,
)

from cpsl.baselines.mag.model import AdaptationGate, MAGModel, encoder_layers, losses, scaling_factor
from cpsl.config.schema import load_params
from cpsl.errors import ParamsError
from cpsl.nn.text_encoder import load_text_encoder, tiny_deberta_config

HP = {k: v for k, v in load_params(REPO / "params.yaml")["baselines"]["mag"]["mosi"].items() if k != "train"}


def _norms(x):
    return torch.linalg.vector_norm(x, dim=-1)


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_the_shift_never_exceeds_the_threshold_and_reaches_it_when_h_is_large(beta):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 7, 16, generator=g)
    scale = torch.logspace(-3, 3, 64).view(64, 1, 1)  # tiny to huge displacements
    h = torch.randn(64, 7, 16, generator=g) * scale
    alpha = scaling_factor(z, h, beta, 1e-6)
    shift = _norms(alpha * h)
    assert alpha.shape == (64, 7, 1) and (alpha <= 1).all() and (alpha > 0).all()
    assert (shift <= beta * _norms(z) * (1 + 1e-5)).all()  # ||alpha H|| <= beta ||Z||, always
    large = _norms(h) > 10 * beta * _norms(z)
    small = _norms(h) < 0.5 * beta * _norms(z)
    assert large.sum() > 50 and small.sum() > 50
    torch.testing.assert_close(shift[large], beta * _norms(z)[large], rtol=1e-4, atol=0)  # capped exactly there
    assert (alpha.squeeze(-1)[small] == 1).all()  # a small displacement passes unscaled
    # epsilon keeps H = 0 finite
    assert torch.isfinite(scaling_factor(z, torch.zeros_like(z), beta, 1e-6)).all()


def test_the_gate_computes_the_papers_displacement():
    torch.manual_seed(0)
    gate = AdaptationGate(16, D_A, D_V, beta_shift=1.0, epsilon=1e-6, dropout=0.5).eval()
    with torch.no_grad():
        gate.bias_h.normal_()
    z, a, v = torch.randn(3, 5, 16), torch.randn(3, 5, D_A), torch.randn(3, 5, D_V)
    g_a = torch.relu(torch.cat([a, z], -1) @ gate.gate_a.weight.T + gate.gate_a.bias)
    g_v = torch.relu(torch.cat([v, z], -1) @ gate.gate_v.weight.T + gate.gate_v.bias)
    h = g_a * (a @ gate.proj_a.weight.T) + g_v * (v @ gate.proj_v.weight.T) + gate.bias_h
    torch.testing.assert_close(gate.displacement(z, a, v), h)
    alpha = torch.clamp(_norms(z) / (_norms(h) + 1e-6), max=1.0).unsqueeze(-1)
    expected = torch.nn.functional.layer_norm(z + alpha * h, (16,), gate.layer_norm.weight, gate.layer_norm.bias)
    torch.testing.assert_close(gate(z, a, v), expected)
    zeros_a, zeros_v = torch.zeros_like(a), torch.zeros_like(v)
    torch.testing.assert_close(gate.displacement(z, zeros_a, zeros_v), gate.bias_h.expand_as(z))


def _tiny_bert():
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    return load_text_encoder(config)


def _tiny_deberta():
    config = tiny_deberta_config(VOCAB)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    return load_text_encoder(config)


def _batch(n=4, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[1, 7:] = 0
    ids = torch.randint(1000, 2000, (n, length), generator=g) * mask
    words = mask.clone()
    words[:, 0] = 0
    words[0, -1] = words[1, 6] = words[2, -1] = words[3, -1] = 0  # [SEP]: zero a/v as the aligner writes it
    a = torch.randn(n, length, D_A, generator=g) * words[..., None]
    v = torch.randn(n, length, D_V, generator=g) * words[..., None]
    return ids, mask, a, v


@pytest.mark.parametrize("encoder", [_tiny_bert, _tiny_deberta], ids=["bert", "deberta"])
@pytest.mark.parametrize("layer", [0, 1])
def test_the_gate_shifts_the_states_entering_the_configured_layer(encoder, layer):
    torch.manual_seed(0)
    model = MAGModel(encoder(), D_A, D_V, {**HP, "injection_layer": layer}).eval()
    seen = {}
    for i, module in enumerate(encoder_layers(model.text_encoder)):  # registered after MAG's own pre-hook
        module.register_forward_pre_hook(lambda m, args, kwargs, i=i: seen.__setitem__(i, args[0].clone()),
                                         with_kwargs=True)
    ids, mask, a, v = _batch()
    with torch.no_grad():
        first = model(ids, mask, a, v).prediction
        states = dict(seen)
        second = model(ids, mask, a + 1.0, v - 1.0).prediction
    for i, before in states.items():
        changed = not torch.equal(before, seen[i])
        assert changed == (i >= layer), (i, layer)  # a/v enter at `layer`, not earlier
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("encoder", [_tiny_bert, _tiny_deberta], ids=["bert", "deberta"])
def test_the_gradient_of_the_prediction_reaches_the_acoustic_and_visual_inputs(encoder):
    torch.manual_seed(0)
    model = MAGModel(encoder(), D_A, D_V, HP).train()
    ids, mask, a, v = _batch()
    a.requires_grad_(True)
    v.requires_grad_(True)
    out = model(ids, mask, a, v)
    assert out.prediction.shape == (4,)
    out.prediction.sum().backward()
    for x in (a, v):
        per_token = x.grad.abs().sum(-1)
        assert (per_token[:, 1:5] > 0).all()  # every sample's word positions feed the prediction
    loss = losses(out, torch.zeros(4), HP)
    assert set(loss) == {"total", "task"} and loss["total"] is loss["task"]


def test_an_injection_layer_the_encoder_lacks_is_refused_naming_the_key():
    with pytest.raises(ParamsError, match=r"baselines.mag: injection_layer 3 is out of range .* 2 layers"):
        MAGModel(_tiny_deberta(), D_A, D_V, {**HP, "injection_layer": 3})
