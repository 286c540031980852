"""Normalisation, AME (Eq. 1), fusion/injection (Eq. 2) and heads."""
import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cpsl.model.ame import AdaptiveModalityEncoder
from cpsl.model.fusion import FusionBlock, ResidualInjection
from cpsl.model.heads import TaskHead
from cpsl.nn.heads import masked_mean, pool
from cpsl.nn.normalize import minmax_normalize


def test_minmax_uses_valid_tokens_only_and_keeps_padding_zero():
    x = torch.tensor([[[1.0, 5.0], [3.0, 5.0], [-100.0, 99.0]],
                      [[2.0, 5.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = minmax_normalize(x, mask)
    # feature 0 over valid tokens: min 1, max 3 ; feature 1 constant 5 -> 0
    expect = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]],
                           [[0.5, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    torch.testing.assert_close(out, expect)
    assert torch.equal(minmax_normalize(x, torch.zeros(2, 3)), torch.zeros(2, 3, 2))  # nothing valid
    with pytest.raises(ValueError, match="mask"):
        minmax_normalize(x, mask[:, :2])


def _normalize_worker(rank, init_file, x, mask, q):
    torch.set_num_threads(1)  # forked child: keep OpenMP out of it
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        sl = slice(4 * rank, 4 * rank + 4)
        q.put((rank, minmax_normalize(x[sl], mask[sl]).numpy()))  # numpy: pickled whole, no shared fd
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_minmax_under_two_processes_matches_one_process_on_the_global_batch():
    torch.manual_seed(0)
    x = torch.randn(8, 5, 3) * torch.arange(1, 9).view(8, 1, 1)  # ranges differ strongly between halves
    mask = torch.ones(8, 5, dtype=torch.long)
    mask[1, 3:] = 0
    mask[6, 2:] = 0
    ctx = mp.get_context("fork")  # fork: no re-import of torch in the children (fast)
    q = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=_normalize_worker, args=(r, os.path.join(tmp, "init"), x, mask, q)) for r in (0, 1)]
        for p in procs:
            p.start()
        parts = dict(q.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
    both = torch.from_numpy(np.concatenate([parts[0], parts[1]]))
    torch.testing.assert_close(both, minmax_normalize(x, mask))
    assert not torch.allclose(both[:4], minmax_normalize(x[:4], mask[:4]))  # a local min/max would differ


def test_ame_samples_in_training_and_returns_mu_at_eval():
    torch.manual_seed(0)
    enc = AdaptiveModalityEncoder(3, 16, dropout=0.0, var_eps=1e-6)
    x = torch.rand(4, 50, 3)
    enc.eval()
    mu, var, z = enc(x)
    assert torch.equal(z, mu) and (var > 0).all()
    enc.train()
    torch.manual_seed(1)
    mu, var, z1 = enc(x)
    eps = (z1 - mu) / torch.sqrt(var + 1e-6)
    assert abs(eps.mean().item()) < 0.05 and eps.std().item() == pytest.approx(1.0, rel=0.05)
    torch.manual_seed(1)  # noise comes from the global RNG: same seed -> same sample
    assert torch.equal(enc(x)[2], z1)
    enc.sample = False  # switch ame off: Z = mu even in training (A0)
    mu, _, z = enc(x)
    assert torch.equal(z, mu)


@pytest.mark.parametrize("kind", ["gated", "concat", "sum"])
def test_fusion_shapes(kind):
    out = FusionBlock(8, 12, kind)(torch.randn(2, 5, 8), torch.randn(2, 5, 8))
    assert out.shape == (2, 5, 12)


def test_gated_fusion_is_a_gate_between_the_two_modalities():
    torch.manual_seed(0)
    block = FusionBlock(4, 6, "gated")
    za, zv = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    with torch.no_grad():
        block.gate.weight.zero_()
        block.gate.bias.fill_(30.0)  # gate ~1: only acoustic passes
    torch.testing.assert_close(block(za, zv), torch.tanh(block.proj_a(za)))
    with torch.no_grad():
        block.gate.bias.fill_(0.0)  # gate 1/2: the average
    torch.testing.assert_close(block(za, zv), 0.5 * (torch.tanh(block.proj_a(za)) + torch.tanh(block.proj_v(zv))))
    with pytest.raises(ValueError, match="model.fusion"):
        FusionBlock(4, 6, "bilinear")


def test_residual_injection_eq2():
    torch.manual_seed(0)
    inj = ResidualInjection(6, 4, beta=0.5)
    t, f = torch.randn(2, 3, 4), torch.randn(2, 3, 6)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    h = inj(t, f, mask)
    expect = t + 0.5 * torch.tanh(inj.w_p(f))
    torch.testing.assert_close(h[mask.bool()], expect[mask.bool()])
    torch.testing.assert_close(h[0, 2], t[0, 2])  # padding is not shifted
    inj.beta = 0.0
    torch.testing.assert_close(inj(t, f, mask), t)


def test_pooling_and_task_head():
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(x, mask, "cls").item() == 1.0
    assert pool(x, mask, "mean").item() == 2.0
    assert masked_mean(x, torch.zeros(1, 3)).item() == 0.0
    head = TaskHead(4, dropout=0.5, pooling="mean").eval()
    assert head(torch.randn(3, 5, 4), torch.ones(3, 5)).shape == (3,)
    with pytest.raises(ValueError, match="model.pooling"):
        TaskHead(4, pooling="max")
