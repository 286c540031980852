"""The bookkeeping around CUDA graphs (cpsl.train.cuda_graphs), on the CPU, with a stand-in for the capture.

A real capture needs a GPU (benchmarks/gpu_check_train.py, bench_gpu.py). What can go wrong around it does not:
the warm-up and capture must leave the model's buffers and the RNG as they were, a replay must hand the optimizer
the graph's gradients, each static case (modulation window open / closed) needs its own graph, short batches run
uncaptured, the verification must accept an exact replay and catch a wrong one, and a failed verification or
capture must continue with the uncaptured step's results (auto) or stop (cuda_graph).

The stand-in: "capturing" runs the step body once and keeps the call; "replaying" runs it again from the same
static inputs and writes the results into the captured output and gradient tensors, as a real replay writes into
the graph's static memory. So a run on the stand-in must equal the eager run bit for bit, and a fault planted in a
replay must be caught.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from train_helpers import (
    CPU,
    D_A,
    D_V,
    GradRecorder,
    NoSchedule,
    assert_clipped,
    assert_same_tensors,
    make_cache,
    small_params,
    tiny_text_model,
    write_params,
)

from cpsl.config.ablations import switches_for
from cpsl.model.network import build_model
from cpsl.model.recipe import LossStep
from cpsl.train.cuda_graphs import CaptureFailed, GraphedSteps, GraphNotExact, _compare, _outputs_list
from cpsl.train.data import load_tensors
from cpsl.train.recipe import linear_warmup_decay, make_optimizer
from cpsl.train.step import EpochSums, StepBody, Stepper


class FakeGraph:
    fault = None  # set by a test: called with the graph after each replay

    def register_generator_state(self, generator):
        self.generator = generator

    def pool(self):
        return None

    def replay(self):
        fresh = self.call()
        for captured, new in zip(_outputs_list(self.outputs), _outputs_list(fresh)):
            captured.copy_(new)
        for (_, p), captured in zip(self.named_params, self.grads):
            if captured is not None:
                captured.copy_(p.grad)
        if FakeGraph.fault is not None:
            FakeGraph.fault(self)


class _Stream:
    current = None  # the stand-in's current stream

    def wait_stream(self, other):
        pass


@contextlib.contextmanager
def _use_stream(stream):
    before, _Stream.current = _Stream.current, stream
    try:
        yield
    finally:
        _Stream.current = before


class Faults:
    """Where a test plants a failure: ``warmup`` (the n-th call of the body on the warm-up stream raises),
    ``capture`` (the capture raises after running the step, with its capture stream left current, as a capture
    whose end fails leaves it), ``replay`` (a replay raises)."""

    warmup: int | None = None
    capture: str | None = None
    replay: str | None = None


@pytest.fixture
def stand_in(monkeypatch):
    """torch.cuda's graph, stream and RNG calls that cuda_graphs makes, on the CPU."""
    def record(self, graph, step_call):
        if Faults.capture:
            _Stream.current = _Stream()  # the capture stream, left current
            step_call()  # a capture that ran (part of) the step before failing
            raise RuntimeError(Faults.capture)
        graph.call, graph.named_params = step_call, self.body.named_params
        graph.outputs = step_call()
        graph.grads = [p.grad for _, p in self.body.named_params]
        return graph.outputs

    real_step = GraphedSteps._step

    def step(self, batch, epoch, generator):
        if Faults.warmup is not None and _Stream.current is not main:
            Faults.warmup -= 1
            if Faults.warmup == 0:
                raise RuntimeError("planted warm-up failure")
        return real_step(self, batch, epoch, generator)

    real_replay = FakeGraph.replay

    def replay(graph):
        if Faults.replay:
            raise RuntimeError(Faults.replay)
        real_replay(graph)

    def set_stream(stream):
        _Stream.current = stream

    main = _Stream()
    _Stream.current = main
    monkeypatch.setattr(GraphedSteps, "_record", record)
    monkeypatch.setattr(GraphedSteps, "_step", step)
    monkeypatch.setattr(FakeGraph, "replay", replay)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "Stream", lambda *a, **k: _Stream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: _Stream.current)
    monkeypatch.setattr(torch.cuda, "stream", _use_stream)
    monkeypatch.setattr(torch.cuda, "set_stream", set_stream)
    for name in ("warmup", "capture", "replay"):
        monkeypatch.setattr(Faults, name, None)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: torch.get_rng_state())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device=None: torch.set_rng_state(state))
    FakeGraph.fault = None
    yield
    FakeGraph.fault = None


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("graphs")
    text = tiny_text_model(tmp / "text")
    cache = make_cache(tmp / "cache.h5", n_train=24, learnable=True)
    data = load_tensors(cache, "train")
    g = torch.Generator().manual_seed(0)
    # 2 epochs of 3 full batches and a short one; the modulation window is open in epoch 0 only
    batches = []
    for _ in range(2):
        order = torch.randperm(24, generator=g)
        batches += [{k: v[order[i:i + n]] for k, v in data.items()} for i, n in ((0, 8), (8, 8), (16, 8), (0, 3))]
    return text, batches


def _model_and_body(text, **overrides):
    params = small_params(text, **{"gm.end_epoch": 0, "train.lr": 1e-3, **overrides})
    switches = switches_for("A6")
    torch.manual_seed(0)
    model = build_model(params, switches, D_A, D_V, text)
    return model, StepBody(LossStep(model, params["loss"], switches), model, params, switches, CPU, use_bf16=False)


def _train(text, batches, mode, strict=False, log=None, scope="body", **overrides):
    model, body = _model_and_body(text, **overrides)
    optimizer = make_optimizer(model, body.params["train"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(len(batches), 1))
    graphs = None
    if mode == "cuda_graph":
        graphs = GraphedSteps(body, 8, strict=strict, log=log or (lambda msg: None),
                              optimizer=optimizer if scope == "step" else None)
    stepper = Stepper(mode, body, optimizer, scheduler, CPU, seed=0, graphs=graphs)
    torch.manual_seed(5)
    outputs, rows, sums = [], [], None
    for i, batch in enumerate(batches):
        epoch, step = divmod(i, 4)
        if step == 0:
            sums = EpochSums(CPU.device)
        out, _ = stepper.step(batch, sums, epoch=epoch, step=step, global_step=i, stop_requested=False)
        outputs.append([t.clone() for t in _outputs_list(out)])
        if step == 3:
            rows.append(sums.row(CPU))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    moments = [v.clone() for s in optimizer.state.values() for k, v in sorted(s.items())]
    return outputs, rows, state, graphs, moments


def _assert_same_run(a, b):
    for i, (x, y) in enumerate(zip(a[0], b[0])):
        for t, u in zip(x, y):
            assert ((t == u) | (t.isnan() & u.isnan())).all(), f"step {i}"
    assert str(a[1]) == str(b[1])
    assert_same_tensors(a[2], b[2])
    assert len(a[4]) == len(b[4]) and all(torch.equal(x, y) for x, y in zip(a[4], b[4]))  # AdamW's state


@pytest.mark.parametrize("scope", ["body", "step"])
def test_graphed_run_equals_the_eager_run(setup, stand_in, scope):
    text, batches = setup
    eager = _train(text, batches, "eager")
    messages = []
    graphed = _train(text, batches, "cuda_graph", log=messages.append, scope=scope)
    _assert_same_run(eager, graphed)
    graphs = graphed[3]
    assert graphs.disabled_reason is None and graphs.includes_optimizer == (scope == "step")
    assert sorted(graphs.entries) == [False, True]  # window open (epoch 0), closed (epoch 1): two graphs
    assert all(e.verified == 2 for e in graphs.entries.values())
    assert graphs.replays == 6  # 3 full batches per epoch; the short ones ran uncaptured
    assert sum("bitwise equal" in m for m in messages) == 4, messages
    assert sum(("forward to AdamW" if scope == "step" else "forward to clipping") in m for m in messages) == 2


@pytest.mark.parametrize("scope", ["body", "step"])
def test_a_replay_that_differs_is_caught(setup, stand_in, scope):
    text, batches = setup
    eager = _train(text, batches, "eager")

    def fault(graph):  # a graph that gets one gradient slightly wrong
        next(g for g in graph.grads if g is not None).add_(1e-4)

    FakeGraph.fault = staticmethod(fault)
    messages = []
    fallen_back = _train(text, batches, "cuda_graph", log=messages.append, scope=scope)
    # auto: the first verification fails, the run continues uncaptured with the uncaptured step's results
    _assert_same_run(eager, fallen_back)
    assert "differs from the uncaptured step in gradient of" in fallen_back[3].disabled_reason
    assert any("CUDA graphs off" in m for m in messages)
    with pytest.raises(GraphNotExact, match="execution.step cuda_graph: replay 1 differs"):
        _train(text, batches, "cuda_graph", strict=True, scope=scope)


def test_a_whole_step_graph_that_updates_adamw_wrongly_is_caught(setup, stand_in):
    text, batches = setup
    eager = _train(text, batches, "eager")

    def fault(graph):  # the optimizer's second moment of one parameter slightly off after the replay
        state = next(iter(graph.optimizer_state.values()))
        state["exp_avg_sq"].mul_(1.001)

    def record_optimizer(graph):
        FakeGraph.optimizer_state = optimizer_state[0]
        fault(FakeGraph)

    optimizer_state = []
    real_init = GraphedSteps.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        optimizer_state.append(self.optimizer.state)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GraphedSteps, "__init__", init)
        FakeGraph.fault = staticmethod(record_optimizer)
        fallen_back = _train(text, batches, "cuda_graph", scope="step")
    _assert_same_run(eager, fallen_back)
    assert "AdamW exp_avg_sq of" in fallen_back[3].disabled_reason


def test_grad_clip_clips_in_the_graphed_step(setup, stand_in):
    text, batches = setup
    grads = {}
    for clip in (0.0, 0.05):
        model, body = _model_and_body(text, **{"train.grad_clip": clip})
        recorder = GradRecorder(model.parameters())
        graphs = GraphedSteps(body, 8, strict=True, log=lambda msg: None)
        stepper = Stepper("cuda_graph", body, recorder, NoSchedule(), CPU, seed=0, graphs=graphs)
        torch.manual_seed(5)
        for i in range(3):  # three replays of one graph: two verified, one plain
            stepper.step(batches[i], EpochSums(CPU.device), epoch=0, step=i, global_step=i, stop_requested=False)
        assert graphs.replays == 3
        grads[clip] = recorder.seen
    for clipped, unclipped in zip(grads[0.05], grads[0.0]):
        assert_clipped(clipped, unclipped, 0.05)


def _state(model):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()}, torch.get_rng_state())


@pytest.mark.parametrize("where", ["warm-up 1", "warm-up 2", "capture", "replay"])
@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("scope", ["body", "step"])
def test_a_failed_warm_up_capture_or_replay_restores_the_state_and_stops(setup, stand_in, where, strict, scope):
    """Each failure point stops auto and cuda_graph alike with one line naming execution.step: sync_free, with the
    current stream, the model's buffers and parameters, AdamW's state and the RNG as before the step."""
    text, batches = setup
    model, body = _model_and_body(text)
    optimizer = make_optimizer(model, body.params["train"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(len(batches), 1))
    graphs = GraphedSteps(body, 8, strict=strict, log=lambda msg: None,
                          optimizer=optimizer if scope == "step" else None)
    stepper = Stepper("cuda_graph", body, optimizer, scheduler, CPU, seed=0, graphs=graphs)
    stream = torch.cuda.current_stream()
    if where == "replay":  # a graph that ran (and was verified) twice, then fails on its third replay
        for i in range(2):
            stepper.step(batches[i], EpochSums(CPU.device), epoch=0, step=i, global_step=i, stop_requested=False)
        Faults.replay = "an illegal memory access was encountered"
    elif where == "capture":
        Faults.capture = "operation not permitted when stream is capturing"
    else:
        Faults.warmup = int(where[-1])
    before, moments = _state(model), [v.clone() for s in optimizer.state.values() for v in s.values()]
    with pytest.raises(CaptureFailed) as failed:
        stepper.step(batches[2], EpochSums(CPU.device), epoch=0, step=2, global_step=2, stop_requested=False)
    message = str(failed.value)
    assert "\n" not in message and "Set execution.step: sync_free" in message, message
    assert ("a replay" if where == "replay" else where.split()[0]) in message
    assert torch.cuda.current_stream() is stream
    if where != "replay":  # a replay that raised may have run part of the step: nothing to restore it to
        after = _state(model)
        assert_same_tensors(before[0], after[0])
        assert torch.equal(before[1], after[1])
        assert all(torch.equal(v, torch.zeros_like(v)) for s in optimizer.state.values() for v in s.values())
        assert not moments  # the first step: AdamW had no state yet, and has only zeros (a fresh state) now
    assert graphs.entries == {}


def test_the_cli_reports_a_failed_capture_in_one_line(setup, stand_in, tmp_path, capsys, monkeypatch):
    """cpsl train: a failed capture exits 1 with one line (PipelineError), not a traceback."""
    from cpsl import cli
    from cpsl.train import loop

    text, _ = setup
    cache = make_cache(tmp_path / "cache.h5", n_train=16, n_valid=8)
    params = write_params(tmp_path / "params.yaml", small_params(text, **{"execution.step": "cuda_graph"}))
    monkeypatch.setattr(loop, "step_mode", lambda configured, ctx: "cuda_graph")
    Faults.capture = "operation not permitted when stream is capturing"
    code = cli.main(["train", "--params", str(params), "--seed", "0", "--data", str(cache), "--out",
                     str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("cpsl train: error: execution.step: capture of the training step's CUDA graph failed")
    assert "Set execution.step: sync_free" in err[-1]


# the replay check (_compare): cheap, no false passes, no false failures

def test_compare_accepts_equal_tensors_nan_and_reorderings_within_the_tolerance():
    a = torch.tensor([1.0, 2.0, float("nan"), float("inf")])
    flags = torch.tensor([False, True])
    assert _compare(["x", "f"], [a, flags], [a.clone(), flags], [a.clone(), flags.clone()]) == (None, 0.0, 0.0)
    # a large tensor whose two uncaptured runs agree bit for bit, replayed with a summation-order change of a few
    # ulps (atomics): passes (it failed when agreeing runs demanded bitwise equality)
    big = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 100
    reordered = big.clone()
    reordered[::7] = torch.nextafter(reordered[::7], torch.tensor(float("inf")))
    failure, gap, spread = _compare(["g"], [big], [big.clone()], [reordered])
    assert failure is None and gap > 0 and spread == 0
    # within 8x the uncaptured step's own spread
    noisy = big + 1e-3
    assert _compare(["g"], [big], [noisy], [big + 5e-3])[0] is None


def test_compare_catches_real_differences():
    big = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    # one element off by 1e-4 on a tensor of magnitude ~3: beyond a few ulps, the uncaptured runs agree
    off = big.clone()
    off[17] += 1e-4
    failure, _, _ = _compare(["g"], [big], [big.clone()], [off])
    assert failure.startswith("g (graph") and "1 element(s)" in failure
    # the tolerance scales with the tensor: 1e-6 is a few ulps of 10 but 1 % of a tensor of magnitude 1e-4
    small = big * 1e-4
    off_small = small.clone()
    off_small[3] += 1e-6
    assert _compare(["s"], [small], [small.clone()], [off_small])[0].startswith("s")
    assert _compare(["b"], [big * 10], [big * 10], [big * 10 + torch.nn.functional.one_hot(
        torch.tensor(3), 1000) * 1e-6])[0] is None
    # beyond 8x the spread of the uncaptured runs
    assert _compare(["g"], [big], [big + 1e-3], [big + 1e-1])[0].startswith("g")
    # non-finite values, flags, presence, shape, dtype: exactly
    nan_vs_number = torch.tensor([1.0, float("nan")])
    assert _compare(["n"], [nan_vs_number], [nan_vs_number], [torch.tensor([1.0, 1.0])])[0].startswith("n")
    inf = torch.tensor([float("inf"), 1.0])
    assert _compare(["i"], [inf], [inf], [torch.tensor([3.0e38, 1.0])])[0].startswith("i")
    flags = torch.tensor([False, True])
    assert _compare(["f"], [flags], [flags], [~flags])[0] == "f"
    assert _compare(["p"], [big], [big], [None])[0] == "p"
    assert _compare(["d"], [big], [big], [big.double()])[0].startswith("d")


class _Float64Copies(TorchDispatchMode):
    """Counts the elements converted to float64."""

    def __enter__(self):
        self.elements = 0
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default and out.dtype == torch.float64 and args[0].dtype != out.dtype:
            self.elements += out.numel()
        return out


def test_compare_converts_only_the_elements_that_differ():
    """The old check converted every pair to float64 (about 4 GB for deberta-v3-base's word embeddings)."""
    big = torch.randn(100_000, generator=torch.Generator().manual_seed(0))
    off = big.clone()
    off[:5] += 1e-6
    with _Float64Copies() as copies:
        assert _compare(["g"], [big], [big.clone()], [off])[0] is None
    assert 0 < copies.elements <= 2 * 5 + 1, copies.elements  # the 5 differing pairs (and the magnitude scalar)
    with _Float64Copies() as copies:
        assert _compare(["g"], [big], [big.clone()], [big.clone()])[0] is None
    assert copies.elements == 0
