"""The three ways of running a training step (execution.step; cpsl.train.step) agree; the new one reads nothing back.

1. No host reads: the sync-free step body (forward, Eq. 4, backward, statistics, Eq. 5-6 + GE, norms, flags,
   clipping) and the device-side epoch sums run on the ``meta`` device, where every read of a value
   (``.item()``, ``.tolist()``, ``bool(t)``, a data-dependent shape) raises. The eager step does read every step,
   and the same check catches it: the check can fail. No host-to-device copies either (they would break a CUDA
   graph capture): after a first call (the capture's warm-up), every copy from the CPU onto the device is
   recorded; the only ones are the GE noise, drawn here by a CPU generator because the meta device has none (on a
   GPU the generator is on the device). This is what found transformers' DeBERTa copying a host scalar on every
   forward (now memoised: cpsl.nn.text_encoder) and our min-max normaliser creating its +inf with
   ``torch.tensor(..., device=...)`` (now ``torch.full``).
2. Same numbers: eager and sync-free steps from the same state give bit-identical losses, statistics, Eq. 5-6
   coefficients and telemetry at every step, the same epoch rows and bit-identical weights, for A0, A6 and C1,
   with the modulation window open and closed; the whole ``fit`` gives the same history and weights.
   (2-process gloo DDP: tests/test_train_ddp.py.)
3. The stop votes of sync-free DDP are read one step late; two gloo processes where only rank 1 gets SIGTERM
   both stop after the same step, and the resumed run ends with the weights of an uninterrupted one.
4. ``train.grad_clip`` clips the gradients the optimizer applies, in every mode (cuda_graph:
   tests/test_cuda_graph_logic.py; DDP: tests/test_train_ddp.py): global norm at the threshold, direction unchanged,
   nothing changed below it.
5. ``auto`` is eager on a CPU; ``cuda_graph`` without CUDA is refused, naming the param.
(CUDA graph capture itself needs a GPU: benchmarks/gpu_check_step.py.)
"""
from __future__ import annotations

import copy
import json
import signal

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode
from train_helpers import (
    CPU,
    D_A,
    D_V,
    GradRecorder,
    NoSchedule,
    assert_clipped,
    assert_same_tensors,
    ddp_stop_worker,
    free_port,
    global_norm,
    load_model_states,
    make_cache,
    small_params,
    tiny_text_model,
)

from cpsl.config.ablations import switches_for
from cpsl.config.schema import validate_params
from cpsl.errors import ParamsError
from cpsl.model.network import build_model
from cpsl.model.recipe import LossStep
from cpsl.train import step as step_module
from cpsl.train.data import load_tensors
from cpsl.train.distributed import DistContext
from cpsl.train.loop import RunSpec, fit, step_mode
from cpsl.train.recipe import linear_warmup_decay, make_optimizer
from cpsl.train.step import EpochSums, StepBody, Stepper, _StopVotes


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("modes")
    text = tiny_text_model(tmp / "text")
    cache = make_cache(tmp / "cache.h5", n_train=24, n_valid=8, learnable=True)
    return tmp, text, cache


def _body(params, ablation, text, ctx, seed=0):
    switches = switches_for(ablation)
    torch.manual_seed(seed)
    model = build_model(params, switches, D_A, D_V, text).to(ctx.device)
    return StepBody(LossStep(model, params["loss"], switches), model, params, switches, ctx, use_bf16=False)


@pytest.mark.parametrize("ablation", ["A0", "A6", "C1"])
def test_the_sync_free_body_reads_nothing_back(setup, ablation, monkeypatch):
    _, text, cache = setup
    params = small_params(text, **{"train.grad_clip": 1.0, "gm.end_epoch": 0})
    meta = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("meta"))
    body = _body(params, ablation, text, meta)
    assert body.model.trim_padding is False  # static shapes on a device
    batch = {k: v[:8].to("meta") for k, v in load_tensors(cache, "train").items()}
    sums = EpochSums(meta.device)
    body(batch, 1, None)  # a first call, as the CUDA-graph warm-up makes before capturing (fills memoised tensors)
    with CopiesToDevice() as copies:
        for epoch in (0, 1):  # modulation window open, then closed
            out = body(batch, epoch, torch.Generator().manual_seed(epoch))
            sums.add(out, 8, body.grad_names)
            assert out.losses.device.type == "meta" and out.tele.vector.shape == (9,)
    assert out.tele.active is False and body.switches.gm == (ablation != "A0")
    encoder_grads = [tuple(p.shape) for m in body.model.modality_encoders().values() for p in m.parameters()
                     if p.grad is not None]
    assert sorted(copies.shapes) == (sorted(encoder_grads) if body.switches.ge else []), copies.shapes

    # the check bites: the eager step's per-step reads raise on the meta device (its GE generator on the CPU,
    # as above: there is no generator on the meta device)
    monkeypatch.setattr(step_module, "noise_generator", lambda seed, step, device: torch.Generator())
    sched = type("S", (), {"step": lambda self: None})()
    with pytest.raises(RuntimeError, match="meta tensor"):  # .tolist(): "Cannot copy out of meta tensor"
        Stepper("eager", body, torch.optim.SGD(body.model.parameters(), lr=0.1), sched, meta, seed=0).step(
            batch, EpochSums(meta.device), epoch=0, step=0, global_step=0, stop_requested=False)


class CopiesToDevice(TorchDispatchMode):
    """Records the shape of every tensor copied from the host onto another device: copies dispatched as ops, and
    ``torch.tensor`` / ``torch.as_tensor`` of host data onto a device (which bypass the dispatch modes)."""

    def __enter__(self):
        self.shapes = []
        self._originals = torch.tensor, torch.as_tensor

        def watch(original):
            def create(data, *args, device=None, **kwargs):
                out = original(data, *args, device=device, **kwargs)
                on_host = not isinstance(data, torch.Tensor) or data.device.type == "cpu"
                if on_host and out.device.type != "cpu":
                    self.shapes.append(tuple(out.shape))
                return out
            return create

        torch.tensor, torch.as_tensor = (watch(f) for f in self._originals)
        return super().__enter__()

    def __exit__(self, *exc):
        torch.tensor, torch.as_tensor = self._originals
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            source = args[1] if func is torch.ops.aten.copy_.default else args[0]
            if source.device.type == "cpu" and out.device.type != "cpu":
                self.shapes.append(tuple(source.shape))
        return out


def _run_steps(mode, params, ablation, text, batches, steps_per_epoch):
    body = _body(params, ablation, text, CPU)
    optimizer = make_optimizer(body.model, params["train"], params["execution"]["optimizer_impl"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(len(batches), 1))
    stepper = Stepper(mode, body, optimizer, scheduler, CPU, seed=0)
    torch.manual_seed(123)  # dropout / AME noise
    per_step, rows, sums = [], [], None
    for i, batch in enumerate(batches):
        epoch, step = divmod(i, steps_per_epoch)
        if step == 0:
            sums = EpochSums(CPU.device)
        out, _ = stepper.step(batch, sums, epoch=epoch, step=step, global_step=i, stop_requested=False)
        per_step.append([t.clone() for t in (out.losses, out.stats, out.bad, out.tele.vector)])
        if step == steps_per_epoch - 1:
            rows.append(sums.row(CPU))
    return per_step, rows, {k: v.detach().clone() for k, v in body.model.state_dict().items()}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


@pytest.mark.parametrize("ablation", ["A0", "A6", "C1"])
def test_eager_and_sync_free_steps_give_identical_numbers(setup, ablation):
    _, text, cache = setup
    params = small_params(text, **{"gm.end_epoch": 1, "train.lr": 1e-3})  # window open for epochs 0-1, closed at 2
    data = load_tensors(cache, "train")
    g = torch.Generator().manual_seed(0)
    batches = [{k: v[idx] for k, v in data.items()} for idx in (torch.randperm(24, generator=g)[:8] for _ in range(9))]
    eager = _run_steps("eager", params, ablation, text, batches, 3)
    sync_free = _run_steps("sync_free", params, ablation, text, batches, 3)
    for i, (a, b) in enumerate(zip(eager[0], sync_free[0])):
        for name, x, y in zip(("losses", "stats", "flags", "telemetry"), a, b):
            assert _same(x, y), f"step {i}: {name} differ: {x} vs {y}"
    assert json.dumps(eager[1], sort_keys=True) == json.dumps(sync_free[1], sort_keys=True)  # exact, NaN == NaN
    assert_same_tensors(eager[2], sync_free[2])
    # the steps really modulated (A6/C1) and the weights really moved
    c = torch.stack([s[3][:2] for s in eager[0]])
    assert (c.min() < 1.0) == (ablation != "A0")
    assert eager[1][-1]["gm/g_a"] != eager[1][-1]["gm/g_a"]  # epoch 2 is outside the window: g not measured


def test_fit_gives_the_same_run_in_both_modes(setup, tmp_path):
    _, text, cache = setup
    out = {}
    for mode in ("eager", "sync_free"):
        params = small_params(text, **{"train.epochs": 2, "execution.step": mode})
        result = fit(RunSpec(params, "A6", 0, cache, tmp_path / mode, text), CPU)
        assert result.exit_code == 0
        out[mode] = ((tmp_path / mode / "history.csv").read_text(),
                     {k: v.detach().clone() for k, v in result.model.state_dict().items()})
    assert out["eager"][0] == out["sync_free"][0]
    assert_same_tensors(out["eager"][1], out["sync_free"][1])


def test_stop_votes_are_read_one_step_late_and_flushed():
    votes = _StopVotes(torch.device("cpu"))
    seen = [votes.push_and_read_previous(torch.tensor(float(v))) for v in (0, 0, 1, 0)]
    assert seen == [False, False, False, True]
    assert votes.push_and_read_previous(torch.tensor(1.0)) is False and votes.flush() is True
    assert votes.flush() is False


def test_ddp_sigterm_on_one_rank_stops_both_after_the_same_step(setup, tmp_path):
    _, text, _ = setup
    cache = make_cache(tmp_path / "cache.h5", n_train=48, n_valid=8)  # 6 steps per epoch and rank
    params = small_params(text, **{"train.epochs": 2, "execution.nproc": 2, "execution.step": "sync_free"})
    plain, interrupted = tmp_path / "plain", tmp_path / "interrupted"
    # uninterrupted, then rank 1 alone gets SIGTERM before its step 2 of epoch 0, then the rerun resumes
    mp.start_processes(ddp_stop_worker, args=(2, free_port(), params, str(cache), str(plain), None), nprocs=2,
                       join=True, start_method="spawn")
    mp.start_processes(ddp_stop_worker, args=(2, free_port(), params, str(cache), str(interrupted), (1, 2)),
                       nprocs=2, join=True, start_method="spawn")
    for rank in (0, 1):
        record = torch.load(interrupted / f"exit-rank{rank}.pt", weights_only=True)
        assert record["exit_code"] == 128 + signal.SIGTERM
    state = torch.load(interrupted / "run" / "state" / "last.pt", weights_only=True)
    # the vote of step 2 is read during step 3: every rank stops after step 3, the state continues at step 4
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, 4, 4)
    mp.start_processes(ddp_stop_worker, args=(2, free_port(), params, str(cache), str(interrupted), None),
                       nprocs=2, join=True, start_method="spawn")
    for rank in (0, 1):
        assert_same_tensors(load_model_states(plain / f"final-rank{rank}.pt"),
                            load_model_states(interrupted / f"final-rank{rank}.pt"))


def test_step_mode_resolution_and_validation(setup):
    _, text, _ = setup
    assert step_mode("auto", CPU) == "eager"
    assert step_mode("sync_free", CPU) == "sync_free"
    with pytest.raises(ValueError, match="execution.step: cuda_graph needs one process on a CUDA device"):
        step_mode("cuda_graph", CPU)
    for key, bad in (("step", "graphs"), ("optimizer_impl", "apex"), ("cuda_graph_scope", "all")):
        params = copy.deepcopy(small_params(text))
        params["execution"][key] = bad
        with pytest.raises(ParamsError, match=f"'execution.{key}' must be one of"):
            validate_params(params, "test params")


def _applied_grads(mode, text, batch, clip):
    """The gradients the optimizer is handed after one A6 step (modulation window open) with train.grad_clip."""
    params = small_params(text, **{"train.grad_clip": clip})
    body = _body(params, "A6", text, CPU)
    recorder = GradRecorder(body.model.parameters())
    torch.manual_seed(123)
    Stepper(mode, body, recorder, NoSchedule(), CPU, seed=0).step(batch, EpochSums(CPU.device), epoch=0, step=0,
                                                                 global_step=0, stop_requested=False)
    return recorder.seen[0]


@pytest.mark.parametrize("mode", ["eager", "sync_free"])
def test_grad_clip_clips_what_the_optimizer_applies(setup, mode):
    _, text, cache = setup
    batch = {k: v[:8] for k, v in load_tensors(cache, "train").items()}
    unclipped = _applied_grads(mode, text, batch, 0.0)
    norm = global_norm(unclipped)
    for clip in (norm / 10, norm / 2):
        assert_clipped(_applied_grads(mode, text, batch, clip), unclipped, clip)
    # below the threshold: exactly the unclipped gradients
    for a, b in zip(_applied_grads(mode, text, batch, 2 * norm), unclipped):
        assert (a is None and b is None) or torch.equal(a, b)


def test_fused_adamw_gives_the_foreach_update_within_float_tolerance(setup):
    """execution.optimizer_impl: the fused AdamW (fewer kernels on a GPU; on the CPU here) follows foreach's
    trajectory: after 9 steps the weights agree to float32 rounding, while they moved by orders of magnitude more."""
    _, text, cache = setup
    data = load_tensors(cache, "train")
    g = torch.Generator().manual_seed(0)
    batches = [{k: v[idx] for k, v in data.items()} for idx in (torch.randperm(24, generator=g)[:8] for _ in range(9))]
    runs = {impl: _run_steps("sync_free", small_params(text, **{"execution.optimizer_impl": impl, "train.lr": 1e-3}),
                             "A6", text, batches, 3) for impl in ("foreach", "fused")}
    torch.manual_seed(0)
    initial = build_model(small_params(text), switches_for("A6"), D_A, D_V, text).state_dict()
    moved = max((runs["foreach"][2][k] - initial[k]).abs().max().item() for k in initial
                if initial[k].is_floating_point())
    apart = max((runs["foreach"][2][k] - runs["fused"][2][k]).abs().max().item() for k in initial
                if initial[k].is_floating_point())
    assert moved > 1e-3 and apart < 1e-5, (moved, apart)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_capturable_adamw_keeps_its_learning_rates_on_the_device_and_the_schedule_updates_them(setup):
    """execution.cuda_graph_scope step: a graph replaying AdamW reads the rate from a tensor; the scheduler must
    update that tensor in place (a new float or a new tensor would leave the graph on the captured rate)."""
    _, text, _ = setup
    body = _body(small_params(text, **{"train.lr": 1e-5, "train.lr_new_modules": 1e-3}), "A6", text, CPU)
    optimizer = make_optimizer(body.model, body.params["train"], capturable_on=torch.device("cpu"))
    rates = [group["lr"] for group in optimizer.param_groups]
    assert all(isinstance(r, torch.Tensor) for r in rates) and all(g["capturable"] for g in optimizer.param_groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(10, 4))
    for step in range(1, 6):
        scheduler.step()
        assert [group["lr"] is r for group, r in zip(optimizer.param_groups, rates)] == [True, True]
        factor = linear_warmup_decay(10, 4)(step)
        assert [float(r) for r in rates] == pytest.approx([1e-5 * factor, 1e-3 * factor])
    # a resume (checkpoints are read onto the CPU; a float rate from an older state) gives tensors again
    saved = optimizer.state_dict()
    saved["param_groups"][0]["lr"] = 2e-5
    optimizer.load_state_dict(saved)
    assert [type(g["lr"]) for g in optimizer.param_groups] == [torch.Tensor, torch.Tensor]
    assert float(optimizer.param_groups[0]["lr"]) == pytest.approx(2e-5)
