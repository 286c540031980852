"""Issue 22: the evaluation normalisation modes (cpsl.nn.normalize) on heavy-tailed inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cpsl.config.schema import load_params, set_dotted, validate_params
from cpsl.errors import ParamsError
from cpsl.nn.normalize import NORM_MODES, MinMaxNormalizer, batch_min_max

D, L = 3, 10


def _heavy_batches(n_batches=12, b=8, seed=0):
    """Word-level features with a log-normal scale mixture and a rare spike, as real COVAREP/FACET words have."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        x = rng.normal(size=(b, L, D)) * np.exp(1.5 * rng.normal(size=(b, L, D)))
        x[rng.random((b, L, D)) < 2e-3] = 1e4
        mask = np.ones((b, L), dtype=bool)
        out.append((torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(mask)))
    return out


def _trained(mode, batches):
    norm = MinMaxNormalizer(D, mode).train()
    for x, mask in batches:
        norm(x, mask)
    return norm.eval()


def test_clamped_keeps_every_evaluation_input_in_the_training_range_and_running_does_not():
    batches = _heavy_batches()
    x, mask = _heavy_batches(1, seed=7)[0]
    x[0, 0, 0] = 3e4  # one extreme value in an evaluation segment
    clamped, running = _trained("clamped", batches)(x, mask), _trained("running", batches)(x, mask)
    assert float(clamped.min()) >= 0.0 and float(clamped.max()) <= 1.0
    assert float(running.abs().max()) > 10.0  # the issue: the running span is narrower than the data's range
    inside = (running >= 0) & (running <= 1)
    torch.testing.assert_close(clamped[inside], running[inside])  # the clamp changes only what was out of range


def test_extremes_keeps_the_training_datas_min_and_max():
    batches = _heavy_batches()
    norm = _trained("extremes", batches)
    every = torch.cat([x.reshape(-1, D) for x, _ in batches])
    torch.testing.assert_close(norm.running_min, every.amin(0))
    torch.testing.assert_close(norm.running_max, every.amax(0))
    x, mask = batches[3]
    out = norm(x, mask)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0  # training data stays in range


def test_extremes_ignores_a_feature_with_no_valid_position_in_a_batch():
    norm = MinMaxNormalizer(D, "extremes").train()
    x = torch.ones(2, L, D)
    norm(x, torch.zeros(2, L, dtype=torch.bool))  # nothing valid: +inf/-inf batch statistics
    norm(x * 2, torch.ones(2, L, dtype=torch.bool))
    assert torch.equal(norm.running_min, torch.full((D,), 2.0)) and torch.equal(norm.running_max, torch.full((D,), 2.0))


@pytest.mark.parametrize("mode", [m for m in NORM_MODES if m != "batch"])
def test_every_kept_mode_gives_a_segment_the_same_value_alone_or_in_a_batch(mode):
    norm = _trained(mode, _heavy_batches())
    x, mask = _heavy_batches(1, seed=3)[0]
    together = norm(x, mask)
    alone = torch.cat([norm(x[i:i + 1], mask[i:i + 1]) for i in range(len(x))])
    torch.testing.assert_close(together, alone, rtol=0, atol=0)


def test_the_modes_share_the_state_dict_keys():
    """A checkpoint of one mode loads into a model of any other (the modes differ in rule, not in buffers)."""
    keys = {mode: set(MinMaxNormalizer(D, mode).state_dict()) for mode in NORM_MODES}
    assert len({frozenset(k) for k in keys.values()}) == 1


def test_batch_mode_stays_the_papers_per_batch_definition():
    norm = _trained("batch", _heavy_batches())
    x, mask = _heavy_batches(1, seed=5)[0]
    lo, hi = batch_min_max(x, mask)
    torch.testing.assert_close(norm(x, mask), (x - lo) / (hi - lo))


def test_the_schema_accepts_the_normalisers_modes_and_defaults_to_clamped():
    params = load_params()
    assert params["model"]["eval_norm"] == "clamped"
    for mode in NORM_MODES:
        set_dotted(params, "model.eval_norm", mode)
        validate_params(params, "test params")
    set_dotted(params, "model.eval_norm", "clamp")
    with pytest.raises(ParamsError, match="model.eval_norm"):
        validate_params(params, "test params")
