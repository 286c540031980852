"""CUDA graphs of the training step (``execution.step: cuda_graph``, and ``auto`` on one CUDA process).

At batch 8 x 50 the eager step of DeBERTa-v3-base is bound by kernel launches and host work, not by the GPU
(benchmarks/RESULTS.md). A CUDA graph replays the whole ``StepBody`` (forward, Eq. 4, backward, the statistics,
Eq. 5-6 + GE, the gradient norm and flags, clipping) with one launch. ``execution.cuda_graph_scope`` says whether the
AdamW step is in the graph too: ``body`` (default) keeps it outside, exactly as in the other modes; ``step``
captures it as well, with a capturable AdamW whose learning rates are device tensors that the scheduler updates in
place (cpsl.train.recipe.make_optimizer), so that a replay reads the current rate.

How it stays exact:
- Static shapes: one graph per case, keyed by the row's recipe (CP+SL: whether the modulation window is open, as
  Eq. 5-6 and GE add kernels);
  only full batches are captured (the short last batch of an epoch runs uncaptured; padding it would change the
  loss). Inputs are copied into the graph's static buffers before each replay.
- Randomness: dropout and AME sampling draw from the default CUDA generator, which graphs replay with the same
  Philox offsets as eager; the GE noise uses one generator registered with every graph and re-seeded before each
  replay with the step's seed (cpsl.train.step.noise_seed), as the uncaptured step seeds a fresh one.
- Capture: two warm-up runs on a side stream first (the CUDA-graphs recipe), after which everything the step
  changes besides the gradients (the model's buffers, the RNG states; with scope ``step`` also the parameters and
  AdamW's state) is restored, so warm-up and capture change nothing.
- Verification: the first ``verify_steps`` replays of every graph are checked against the uncaptured step run
  twice from the same state (``_compare``): flags exactly; every float tensor (outputs, gradients, buffers; with
  scope ``step`` parameters and AdamW state) equal, or within 8x the uncaptured step's own run-to-run difference
  on that tensor plus a few float32 ulps of the tensor's magnitude (kernels that accumulate with atomics may
  reorder sums from run to run, also in two runs that happen to agree). If a replay is out of bounds, ``auto``
  says why and continues uncaptured from the uncaptured step's results (the capture itself succeeded, so nothing
  is left in an unknown state); an explicit ``cuda_graph`` raises ``GraphNotExact``.
- Failures: a warm-up, capture or replay that raises restores the current stream (a capture that fails part-way
  can leave its capture stream current) and the state above, then stops the run with one line naming
  ``execution.step: sync_free`` as the way on (``CaptureFailed``, exit 1), in ``auto`` as in ``cuda_graph``: after a
  failed capture the caching allocator may still be in capture state (known PyTorch issues), so continuing in
  the same process could crash later or silently differ from eager.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from cpsl.errors import PipelineError
from cpsl.train.step import StepBody, StepOutputs, seeded_generator

SCOPES = ("body", "step")
# the magnitude term of the replay check: this many float32 ulps of the tensor's largest value
ULPS_OF_MAGNITUDE = 64
SPREAD_FACTOR = 8  # and this many times the uncaptured step's own run-to-run difference on the tensor


class GraphNotExact(RuntimeError):
    pass


class CaptureFailed(PipelineError):
    """Warming up, capturing or replaying a CUDA graph raised; the state was restored and the run must stop."""


@dataclass
class _Entry:
    graph: torch.cuda.CUDAGraph
    static: dict            # the graph's input buffers
    outputs: StepOutputs    # the graph's output buffers (overwritten by each replay)
    grads: list             # the graph's gradient buffers, one per named parameter (None: no gradient)
    grad_names: list
    verified: int = 0


@dataclass
class _Snapshot:
    """What a step changes besides the gradients: model buffers and RNG states; with the optimizer in the graph
    also the parameters and AdamW's state (a parameter without state yet gets its fresh, zero state back)."""

    buffers: list
    cuda_rng: torch.Tensor
    cpu_rng: torch.Tensor
    device: torch.device
    params: list | None = None
    optimizer_state: dict | None = None

    @classmethod
    def take(cls, model: torch.nn.Module, device: torch.device, optimizer=None) -> "_Snapshot":
        snap = cls([b.detach().clone() for b in model.buffers()], torch.cuda.get_rng_state(device),
                   torch.get_rng_state(), device)
        if optimizer is not None:
            snap.params = [p.detach().clone() for p in model.parameters()]
            snap.optimizer_state = {id(p): {k: v.clone() for k, v in s.items() if torch.is_tensor(v)}
                                    for p, s in optimizer.state.items()}
        return snap

    def restore(self, model: torch.nn.Module, optimizer=None) -> None:
        with torch.no_grad():
            for b, saved in zip(model.buffers(), self.buffers):
                b.copy_(saved)
            if self.params is not None:
                for p, saved in zip(model.parameters(), self.params):
                    p.copy_(saved)
                for p, state in optimizer.state.items():
                    saved = self.optimizer_state.get(id(p))
                    for k, v in state.items():
                        if not torch.is_tensor(v):
                            continue
                        if saved is None:
                            v.zero_()
                        else:
                            v.copy_(saved[k])
        torch.cuda.set_rng_state(self.cuda_rng, self.device)
        torch.set_rng_state(self.cpu_rng)

    def tensors(self, model: torch.nn.Module, optimizer=None) -> tuple[list[str], list]:
        """(labels, tensors) of the snapshot, for the replay check."""
        labels = [f"buffer {n}" for n, _ in model.named_buffers()]
        tensors = list(self.buffers)
        if self.params is not None:
            names = [n for n, _ in model.named_parameters()]
            labels += [f"parameter {n}" for n in names]
            tensors += self.params
            for n, p in model.named_parameters():
                for k, v in sorted(self.optimizer_state.get(id(p), {}).items()):
                    labels.append(f"AdamW {k} of {n}")
                    tensors.append(v)
        return labels, tensors


def _outputs_list(out: StepOutputs) -> list[torch.Tensor]:
    return [out.losses, out.stats, out.bad, out.bad_params, out.tele.vector]


def _failure_line(what: str, exc: BaseException) -> str:
    return (f"execution.step: {what} of the training step's CUDA graph failed ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())}); the run stops, because after a failed capture the CUDA state cannot be "
            f"trusted. Set execution.step: sync_free (no graphs, same numbers) and rerun")


class GraphedSteps:
    """Captures, verifies and replays ``StepBody`` (with ``optimizer``: and its AdamW step) per static case; see the
    module docstring. ``run`` returns the step's outputs; ``includes_optimizer`` says whether it also stepped the
    optimizer."""

    def __init__(self, body: StepBody, batch_size: int, *, strict: bool, log, verify_steps: int = 2,
                 optimizer=None):
        self.body, self.batch_size, self.strict, self.log = body, batch_size, strict, log
        self.verify_steps = verify_steps
        self.optimizer = optimizer
        self.includes_optimizer = optimizer is not None
        self.device = body.ctx.device
        self.entries: dict[bool, _Entry] = {}
        self.generator = torch.Generator(device=self.device)
        self.pool = None
        self.disabled_reason: str | None = None
        self.replays = 0

    def _key(self, epoch: int):
        return self.body.recipe.graph_key(epoch)  # CP+SL: the modulation window open or closed

    def can_run(self, batch: dict, epoch: int) -> bool:
        return self.disabled_reason is None and len(batch["label"]) == self.batch_size

    def run(self, batch: dict, epoch: int, noise_seed: int) -> StepOutputs:
        key = self._key(epoch)
        entry = self.entries.get(key) or self._capture(key, batch, epoch)
        if entry.verified < self.verify_steps:
            return self._verified_replay(entry, batch, epoch, noise_seed)
        return self._replay(entry, batch, noise_seed)

    def _step(self, batch: dict, epoch: int, generator) -> StepOutputs:
        """What a graph holds: the body, and with scope ``step`` the AdamW step."""
        out = self.body(batch, epoch, generator)
        if self.optimizer is not None:
            self.optimizer.step()
        return out

    def _snapshot(self) -> _Snapshot:
        return _Snapshot.take(self.body.model, self.device, self.optimizer)

    def _restore(self, snapshot: _Snapshot) -> None:
        snapshot.restore(self.body.model, self.optimizer)

    def disable(self, reason: str) -> None:
        self.disabled_reason = reason
        self.entries.clear()
        self.log(f"CUDA graphs off for the rest of this run: {reason}; the step runs uncaptured (sync-free)")

    def _capture(self, key: bool, batch: dict, epoch: int) -> _Entry:
        stream = torch.cuda.current_stream(self.device)
        before = self._snapshot()
        what = "warm-up"
        try:
            static = {k: v.clone() for k, v in batch.items()}
            side = torch.cuda.Stream(self.device)
            side.wait_stream(stream)
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.generator.manual_seed(0)
                    self._step(static, epoch, self.generator)
            stream.wait_stream(side)
            self._restore(before)
            what = "capture"
            graph = torch.cuda.CUDAGraph()
            register = getattr(graph, "register_generator_state", None)  # newer PyTorch registers lazily
            if register is not None:
                register(self.generator)
            self.generator.manual_seed(0)
            outputs = self._record(graph, lambda: self._step(static, epoch, self.generator))
        except Exception as exc:
            self._recover(stream, before, what, exc)
        # a capture executes nothing on a GPU; the stand-in of the CPU tests does, and this undoes it
        self._restore(before)
        self.pool = graph.pool()
        entry = _Entry(graph, static, outputs, [p.grad for _, p in self.body.named_params],
                       list(self.body.grad_names))
        self.entries[key] = entry
        scope = "forward to AdamW" if self.includes_optimizer else "forward to clipping"
        self.log(f"captured the training step ({scope}) in a CUDA graph "
                 f"(modulation window {'open' if key else 'closed'})")
        return entry

    def _recover(self, stream, before: _Snapshot, what: str, exc: Exception):
        """A warm-up, capture or replay raised: make ``stream`` current again and restore the state, then stop."""
        torch.cuda.set_stream(stream)
        try:
            self._restore(before)
        except Exception as again:  # the device itself may be unusable now: say so, still stop with one line
            exc = RuntimeError(f"{exc}; restoring the state then failed too: {again}")
        self.entries.clear()
        raise CaptureFailed(_failure_line(what, exc)) from exc

    def _record(self, graph: torch.cuda.CUDAGraph, step_call) -> StepOutputs:
        """Capture ``step_call`` into ``graph`` (one place, so that a CPU test can stand in for the capture)."""
        with torch.cuda.graph(graph, pool=self.pool):
            return step_call()

    def _replay(self, entry: _Entry, batch: dict, noise_seed: int) -> StepOutputs:
        stream = torch.cuda.current_stream(self.device)
        try:
            for name, buffer in entry.static.items():
                buffer.copy_(batch[name], non_blocking=True)
            self.generator.manual_seed(noise_seed)
            entry.graph.replay()
        except Exception as exc:
            # nothing to restore to: a replay that raised may have run part of the step (its state is lost with
            # the process); the stream is made current again so that the error can be reported cleanly
            torch.cuda.set_stream(stream)
            self.entries.clear()
            raise CaptureFailed(_failure_line("a replay", exc)) from exc
        # the optimizer reads p.grad: point it at this graph's gradient buffers (another graph or an uncaptured
        # step may have replaced them)
        for (_, p), grad in zip(self.body.named_params, entry.grads):
            p.grad = grad
        self.body.grad_names = entry.grad_names
        self.replays += 1
        return entry.outputs

    def _reference(self, batch: dict, epoch: int, noise_seed: int) -> tuple[list, list, _Snapshot]:
        """The uncaptured step from the current state: (outputs, gradients) cloned, and the state it leaves."""
        ref = self._step(batch, epoch, seeded_generator(noise_seed, self.device))
        outputs = [t.clone() for t in _outputs_list(ref)]
        grads = [None if p.grad is None else p.grad.clone() for _, p in self.body.named_params]
        return outputs, grads, self._snapshot()

    def _verified_replay(self, entry: _Entry, batch: dict, epoch: int, noise_seed: int) -> StepOutputs:
        """Replay once, checked against the uncaptured step run twice from the same state (``_compare``)."""
        model = self.body.model
        before = self._snapshot()
        ref1 = self._reference(batch, epoch, noise_seed)
        self._restore(before)
        ref2 = self._reference(batch, epoch, noise_seed)
        self._restore(before)
        out = self._replay(entry, batch, noise_seed)
        after = self._snapshot()
        state_labels, graph_state = after.tensors(model, self.optimizer)
        labels = (["losses", "stats", "flags", "parameter flags", "telemetry"]
                  + [f"gradient of {n}" for n, _ in self.body.named_params] + state_labels)
        graph = _outputs_list(out) + list(entry.grads) + graph_state
        eager1 = ref1[0] + ref1[1] + ref1[2].tensors(model, self.optimizer)[1]
        eager2 = ref2[0] + ref2[1] + ref2[2].tensors(model, self.optimizer)[1]
        failure, gap, spread = _compare(labels, eager1, eager2, graph)
        if failure is None:
            entry.verified += 1
            how = ("bitwise equal" if gap == 0 else
                   f"within tolerance: largest difference {gap:.2g}; the uncaptured step differs from itself by up "
                   f"to {spread:.2g}")
            self.log(f"CUDA graph replay {entry.verified} verified against the uncaptured step ({how})")
            return out
        reason = f"replay {entry.verified + 1} differs from the uncaptured step in {failure}"
        if self.strict:
            raise GraphNotExact(f"execution.step cuda_graph: {reason}")
        self.disable(reason)
        # continue from the first uncaptured run's results and state (the graph captured cleanly: the allocator
        # and streams are as after any replay)
        self._restore(ref1[2])
        for (_, p), grad in zip(self.body.named_params, ref1[1]):
            p.grad = grad
        return StepOutputs(*ref1[0][:4], dataclasses.replace(out.tele, vector=ref1[0][4]))


def _differences(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in float64 at the elements where a and b differ (NaN equals NaN; a number against NaN, or a
    different infinity, is inf). Compared in the native dtype first: only differing elements are converted."""
    differ = a != b
    x, y = a[differ], b[differ]
    keep = ~(x.isnan() & y.isnan())
    x, y = x[keep].double(), y[keep].double()
    return (x - y).abs().nan_to_num(nan=float("inf"))


def _magnitude(t: torch.Tensor) -> torch.Tensor:
    """The largest finite |value| of ``t`` (a reduction: no full-size temporary unless ``t`` has non-finite values)."""
    largest = torch.linalg.vector_norm(t, float("inf"))
    if bool(torch.isfinite(largest)):
        return largest.double()
    finite = t[torch.isfinite(t)]
    return finite.abs().max().double() if finite.numel() else torch.zeros((), dtype=torch.float64, device=t.device)


def _tolerance(e1: torch.Tensor, spread: float) -> float:
    eps = max(torch.finfo(e1.dtype).eps, torch.finfo(torch.float32).eps)
    return SPREAD_FACTOR * spread + ULPS_OF_MAGNITUDE * eps * float(_magnitude(e1))


def _compare(labels: list[str], eager1: list, eager2: list, graph: list) -> tuple[str | None, float, float]:
    """(the first tensor where the graph is out of bounds, or None; the largest graph-vs-uncaptured difference; the
    largest difference between the two uncaptured runs). Flags (non-float tensors), presence, shape and dtype must
    match exactly; a float tensor passes where every element is within ``_tolerance``. Host reads: verification
    steps only."""
    worst_gap, worst_spread = 0.0, 0.0
    for label, e1, e2, g in zip(labels, eager1, eager2, graph):
        if e1 is None or g is None:
            if (e1 is None) != (g is None):
                return label, 0.0, 0.0
            continue
        if e1.shape != g.shape or e1.dtype != g.dtype:
            return f"{label} (shape or dtype)", 0.0, 0.0
        if not e1.is_floating_point():  # flags: always exactly
            if not torch.equal(e1, g):
                return label, 0.0, 0.0
            continue
        gaps = _differences(e1, g)
        if gaps.numel() == 0:  # the common case: equal in the native dtype
            continue
        spreads = _differences(e1, e2)
        spread = float(spreads.max()) if spreads.numel() else 0.0
        gap = float(gaps.max())
        tolerance = _tolerance(e1, spread)
        worst_gap, worst_spread = max(worst_gap, gap), max(worst_spread, spread)
        if not gap <= tolerance:
            return (f"{label} (graph {gap:.3g} from the uncaptured step at {gaps.numel()} element(s); allowed "
                    f"{tolerance:.3g}: the uncaptured step differs {spread:.3g} from itself)"), gap, spread
    return None, worst_gap, worst_spread
