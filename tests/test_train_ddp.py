"""Two gloo processes on CPU with the real training loop (GM+GE+CP on).

1. Ablation A6 (AME sampling, dropout, GM, GE, CP, SL all on): each rank draws its own dropout and AME noise,
   yet the replicas' parameters stay bit-identical, because gradients are all-reduced by DDP, the unimodal
   errors deciding Eq. 5/6 are all-reduced, and the GE noise comes from a generator seeded by (seed, step)
   that is the same on every rank.
2. 2 processes x batch 4 == 1 process x batch 8 (within float tolerance). This needs a run without any
   per-rank randomness, so it uses C1 (GM+GE+CP, no AME sampling) with every dropout at 0 (the tiny text
   model is saved with hidden/attention dropout 0): then both runs compute the same mean gradient, the same
   global min-max normalisation, the same MAEs and the same GE noise, up to summation order. The task loss is
   MSE there: with L1 the gradient of the task head's LayerNorm bias is a sum of +-1/B signs that cancels to
   exactly 0 in one summation order and to ~1e-9 in another, and Adam turns that rounding into updates of
   ~0.1 lr, a real but meaningless difference.
3. `cpsl train` with execution.nproc 2 re-launches itself under torchrun (gloo) and writes a run with world size 2.
4. The sync-free step and the eager reference step (execution.step auto on CPU) give the same A6 run under DDP:
   bit-identical weights on both ranks and the same history (losses, coefficients, telemetry).
5. ``train.grad_clip`` clips the DDP-averaged gradients, in eager and sync-free: on both ranks the optimizer gets
   the same gradients, scaled to the threshold, in the unclipped direction.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from train_helpers import (
    D_A,
    D_V,
    REPO,
    assert_clipped,
    assert_same_tensors,
    ddp_clip_worker,
    ddp_worker,
    free_port,
    load_model_states,
    make_cache,
    small_params,
    tiny_text_model,
    write_params,
)

from cpsl.config.ablations import switches_for
from cpsl.formats.run_folder import read_history
from cpsl.model.network import build_model
from cpsl.train.distributed import DistContext
from cpsl.train.loop import RunSpec, fit

NO_DROPOUT = {"model.encoder_dropout": 0.0, "model.classifier_dropout": 0.0, "loss.task": "mse"}


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    text = tiny_text_model(tmp / "text")
    cache = make_cache(tmp / "cache.h5", n_train=16, n_valid=8)
    # 3 epochs x 2 steps; the gm window covers all of them
    common = {"train.epochs": 3, "train.warmup_ratio": 0.0, "execution.nproc": 2}
    a6 = small_params(text, ablations=["A6"], **common, **{"execution.step": "sync_free"})
    c1 = small_params(text, ablations=["C1"], **common, **NO_DROPOUT)
    a6_eager = small_params(text, ablations=["A6"], **common)  # execution.step auto: eager on the CPU
    jobs = [("a6", a6, "A6", str(cache), str(tmp / "run_a6")), ("c1", c1, "C1", str(cache), str(tmp / "run_c1")),
            ("a6eager", a6_eager, "A6", str(cache), str(tmp / "run_a6eager"))]
    mp.start_processes(ddp_worker, args=(2, free_port(), jobs, str(tmp)), nprocs=2, join=True, start_method="spawn")

    single = small_params(text, ablations=["C1"], **{**common, "execution.nproc": 1}, **NO_DROPOUT)
    ctx = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    torch.manual_seed(0)  # fit seeds the initialisation the same way
    initial = build_model(single, switches_for("C1"), D_A, D_V, text).state_dict()
    result = fit(RunSpec(single, "C1", 0, cache, tmp / "run_single", text), ctx)
    assert result.exit_code == 0
    return tmp, {k: v.detach() for k, v in result.model.state_dict().items()}, initial


def test_replicas_identical_with_gm_ge_cp_and_per_rank_noise(ddp_runs):
    tmp, _, _ = ddp_runs
    rank0, rank1 = load_model_states(tmp / "a6-rank0.pt"), load_model_states(tmp / "a6-rank1.pt")
    assert_same_tensors(rank0, rank1)
    # ... while the run really modulated: a coefficient below 1, Eq. 6 penalties, GE noise on every step
    history = read_history(tmp / "run_a6" / "history.csv")
    assert len(history) == 3
    assert min(min(row["gm/c_a"], row["gm/c_v"]) for row in history) < 1.0, history
    assert sum(row["gm/conflicts"] for row in history) > 0, history
    assert sum(row["gm/ge_steps"] for row in history) == 3 * 2  # 3 epochs x 2 steps, all in the window
    summary = json.loads((tmp / "run_a6" / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["conflicts_total"] == sum(r["gm/conflicts"] for r in history)
    best = torch.load(tmp / "run_a6" / "best.pt", weights_only=True)
    assert best["meta"]["switches"]["ge"] and best["meta"]["switches"]["cp"]


def test_sync_free_and_eager_steps_give_the_same_ddp_run(ddp_runs):
    tmp, _, _ = ddp_runs
    assert json.loads((tmp / "run_a6" / "train_summary.json").read_text())["step_mode"] == "sync_free"
    assert json.loads((tmp / "run_a6eager" / "train_summary.json").read_text())["step_mode"] == "eager"
    for rank in (0, 1):
        assert_same_tensors(load_model_states(tmp / f"a6-rank{rank}.pt"),
                            load_model_states(tmp / f"a6eager-rank{rank}.pt"))
    assert (tmp / "run_a6" / "history.csv").read_text() == (tmp / "run_a6eager" / "history.csv").read_text()


def test_two_processes_of_4_match_one_process_of_8(ddp_runs):
    tmp, single, initial = ddp_runs
    ddp = load_model_states(tmp / "c1-rank0.pt")
    assert ddp.keys() == single.keys() == initial.keys()
    update = {k: single[k].float() - initial[k].float() for k in single}
    moved = max(u.abs().max().item() for u in update.values())
    worst = max((ddp[k].float() - single[k].float()).abs().max().item() for k in ddp)
    print(f"largest update {moved:.3g}, largest 2x4 vs 1x8 difference {worst:.3g}")
    assert moved > 1e-3  # training really changed the weights
    assert worst < 1e-5, f"largest parameter difference {worst} (largest update {moved})"


def test_cpsl_train_with_nproc_2_relaunches_itself_under_torchrun(ddp_runs):
    tmp, _, _ = ddp_runs
    params = small_params(str(tmp / "text"), **{"train.epochs": 1, "execution.nproc": 2})
    params_file = write_params(tmp / "params_nproc2.yaml", params)
    run = tmp / "run_cli"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-m", "cpsl.cli", "train", "--params", str(params_file), "--seed", "0",
                           "--data", str(tmp / "cache.h5"), "--out", str(run)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "launching 2 processes with torchrun" in proc.stderr
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2  # 16 samples / global batch 8
    assert torch.load(run / "best.pt", weights_only=True)["epoch"] == 0


def test_grad_clip_clips_under_ddp(ddp_runs):
    tmp, _, _ = ddp_runs
    out = tmp / "clip"
    out.mkdir()
    params = small_params(str(tmp / "text"), ablations=["A6"], **{"execution.nproc": 2, "train.grad_clip": 0.05})
    mp.start_processes(ddp_clip_worker, args=(2, free_port(), params, str(tmp / "cache.h5"), str(out)), nprocs=2,
                       join=True, start_method="spawn")
    for mode in ("eager", "sync_free"):
        grads = {(clip, rank): torch.load(out / f"clip-{mode}-{clip}-rank{rank}.pt", weights_only=True)
                 for clip in (0.05, 0.0) for rank in (0, 1)}
        for clip in (0.05, 0.0):  # DDP: both ranks apply the same gradients
            for a, b in zip(grads[clip, 0], grads[clip, 1]):
                assert (a is None and b is None) or torch.equal(a, b)
        assert_clipped(grads[0.05, 0], grads[0.0, 0], 0.05)
