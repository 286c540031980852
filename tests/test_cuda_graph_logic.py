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
from train_helpers import D_A, D_V, assert_same_tensors, make_cache, one_thread, small_params, tiny_text_model

from cpsl.ablations import switches_for
from cpsl.model.network import build_model
from cpsl.train import cuda_graphs
from cpsl.train.cuda_graphs import GraphedSteps, GraphNotExact, _compare, _outputs_list
from cpsl.train.data import load_tensors
from cpsl.train.distributed import DistContext
from cpsl.train.loop import linear_warmup_decay, make_optimizer
from cpsl.train.step import EpochSums, LossStep, StepBody, Stepper

CPU = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


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
    def wait_stream(self, other):
        pass


@pytest.fixture
def stand_in(monkeypatch):
    """torch.cuda's graph, stream and RNG calls that cuda_graphs makes, on the CPU."""
    def record(self, graph, body_call):
        if getattr(self, "capture_error", None):
            raise RuntimeError(self.capture_error)
        graph.call, graph.named_params = body_call, self.body.named_params
        graph.outputs = body_call()
        graph.grads = [p.grad for _, p in self.body.named_params]
        return graph.outputs

    monkeypatch.setattr(GraphedSteps, "_record", record)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "Stream", lambda *a, **k: _Stream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: _Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
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


def _train(text, batches, mode, strict=False, capture_error=None, log=None):
    params = small_params(text, **{"gm.end_epoch": 0, "train.lr": 1e-3})
    switches = switches_for("A6")
    torch.manual_seed(0)
    model = build_model(params, switches, D_A, D_V, text)
    body = StepBody(LossStep(model, params["loss"], switches), model, params, switches, CPU, use_bf16=False)
    optimizer = make_optimizer(model, params["train"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(len(batches), 1))
    graphs = None
    if mode == "cuda_graph":
        graphs = GraphedSteps(body, 8, strict=strict, log=log or (lambda msg: None))
        graphs.capture_error = capture_error
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
    return outputs, rows, state, graphs


def _assert_same_run(a, b):
    for i, (x, y) in enumerate(zip(a[0], b[0])):
        for t, u in zip(x, y):
            assert ((t == u) | (t.isnan() & u.isnan())).all(), f"step {i}"
    assert str(a[1]) == str(b[1])
    assert_same_tensors(a[2], b[2])


def test_graphed_run_equals_the_eager_run(setup, stand_in):
    text, batches = setup
    eager = _train(text, batches, "eager")
    messages = []
    graphed = _train(text, batches, "cuda_graph", log=messages.append)
    _assert_same_run(eager, graphed)
    graphs = graphed[3]
    assert graphs.disabled_reason is None
    assert sorted(graphs.entries) == [False, True]  # window open (epoch 0), closed (epoch 1): two graphs
    assert all(e.verified == 2 for e in graphs.entries.values())
    assert graphs.replays == 6  # 3 full batches per epoch; the short ones ran uncaptured
    assert sum("bitwise equal" in m for m in messages) == 4, messages


def test_a_replay_that_differs_is_caught(setup, stand_in):
    text, batches = setup
    eager = _train(text, batches, "eager")

    def fault(graph):  # a graph that gets one gradient slightly wrong
        next(g for g in graph.grads if g is not None).add_(1e-4)

    FakeGraph.fault = staticmethod(fault)
    messages = []
    fallen_back = _train(text, batches, "cuda_graph", log=messages.append)
    # auto: the first verification fails, the run continues uncaptured with the uncaptured step's results
    _assert_same_run(eager, fallen_back)
    assert "differs from the uncaptured step in gradient of" in fallen_back[3].disabled_reason
    assert any("CUDA graphs off" in m for m in messages)
    with pytest.raises(GraphNotExact, match="execution.step cuda_graph: replay 1 differs"):
        _train(text, batches, "cuda_graph", strict=True)


def test_a_failed_capture_falls_back_or_stops(setup, stand_in):
    text, batches = setup
    eager = _train(text, batches, "eager")
    error = "operation not permitted when stream is capturing"
    fallen_back = _train(text, batches, "cuda_graph", capture_error=error)
    _assert_same_run(eager, fallen_back)
    assert error in fallen_back[3].disabled_reason
    with pytest.raises(RuntimeError, match="capturing the step failed"):
        _train(text, batches, "cuda_graph", strict=True, capture_error=error)


def test_compare_is_bitwise_on_a_deterministic_platform_and_bounded_otherwise():
    a = torch.tensor([1.0, 2.0])
    flags = torch.tensor([False, True])
    assert _compare(["x", "f"], [a, flags], [a.clone(), flags], [a.clone(), flags.clone()]) == (None, 0.0)
    off = a + torch.tensor([0.0, 1e-6])
    failure, _ = _compare(["x"], [a], [a.clone()], [off])
    assert failure.startswith("x")
    # the uncaptured step differs from itself by ~1e-5: a graph within 8x of that passes, beyond it fails
    noisy = a + torch.tensor([0.0, 1e-5])
    assert _compare(["x"], [a], [noisy], [a + torch.tensor([0.0, 5e-5])])[0] is None
    assert _compare(["x"], [a], [noisy], [a + torch.tensor([0.0, 1e-3])])[0].startswith("x")
    # flags always exactly; NaN equals NaN
    assert _compare(["f"], [flags], [flags], [~flags])[0] == "f"
    nan = torch.tensor([float("nan")])
    assert _compare(["n"], [nan], [nan.clone()], [nan.clone()])[0] is None
    assert cuda_graphs.GraphNotExact is GraphNotExact
