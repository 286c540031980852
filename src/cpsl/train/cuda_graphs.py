"""CUDA graphs of the training step's body (``train.step: cuda_graph``, and ``auto`` on one CUDA process).

At batch 8 x 50 the eager step of DeBERTa-v3-base is bound by kernel launches and host work, not by the GPU
(benchmarks/RESULTS.md). A CUDA graph replays the whole ``StepBody`` (forward, Eq. 4, backward, the statistics,
Eq. 5-6 + GE, the gradient norm and flags, clipping) with one launch. The AdamW step stays outside the graph:
it is a handful of foreach kernels, and keeping it out keeps the optimizer, its float learning rate, the
scheduler and the checkpoint format exactly as in the other modes.

How it stays exact:
- Static shapes: one graph per case, keyed by the row's recipe (CP+SL: whether the modulation window is open, as
  Eq. 5-6 and GE add kernels);
  only full batches are captured (the short last batch of an epoch runs uncaptured; padding it would change the
  loss). Inputs are copied into the graph's static buffers before each replay.
- Randomness: dropout and AME sampling draw from the default CUDA generator, which graphs replay with the same
  Philox offsets as eager; the GE noise uses one generator registered with every graph and re-seeded before each
  replay with the step's seed (cpsl.train.step.noise_seed), as the uncaptured step seeds a fresh one.
- Capture: two warm-up runs on a side stream first (the CUDA-graphs recipe), after which the model's buffers (the
  running min-max statistics) and the RNG states are restored, so warm-up and capture change nothing.
- Verification: the first ``verify_steps`` replays of every graph are checked against the uncaptured body run
  from the same state: losses, statistics, flags, telemetry, every gradient and buffer must be bitwise equal.
  If not (or if capture fails), ``auto`` logs why and continues uncaptured, with the uncaptured step's results;
  an explicit ``cuda_graph`` raises. So graphs are on by default only where they are exact.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from cpsl.train.step import StepBody, StepOutputs, seeded_generator


class GraphNotExact(RuntimeError):
    pass


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
    """Model buffers and RNG states: what the body changes besides the gradients."""

    buffers: list
    cuda_rng: torch.Tensor
    cpu_rng: torch.Tensor
    device: torch.device

    @classmethod
    def take(cls, model: torch.nn.Module, device: torch.device) -> "_Snapshot":
        return cls([b.detach().clone() for b in model.buffers()], torch.cuda.get_rng_state(device),
                   torch.get_rng_state(), device)

    def restore(self, model: torch.nn.Module) -> None:
        with torch.no_grad():
            for b, saved in zip(model.buffers(), self.buffers):
                b.copy_(saved)
        torch.cuda.set_rng_state(self.cuda_rng, self.device)
        torch.set_rng_state(self.cpu_rng)


def _outputs_list(out: StepOutputs) -> list[torch.Tensor]:
    return [out.losses, out.stats, out.bad, out.bad_params, out.tele.vector]


class GraphedSteps:
    """Captures, verifies and replays ``StepBody`` per static case; see the module docstring."""

    def __init__(self, body: StepBody, batch_size: int, *, strict: bool, log, verify_steps: int = 2):
        self.body, self.batch_size, self.strict, self.log = body, batch_size, strict, log
        self.verify_steps = verify_steps
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
        try:
            entry = self.entries.get(key) or self._capture(key, batch, epoch)
            if entry.verified < self.verify_steps:
                return self._verified_replay(entry, batch, epoch, noise_seed)
            return self._replay(entry, batch, noise_seed)
        except GraphNotExact:
            raise
        except Exception as exc:  # capture is not possible here: continue uncaptured (auto) or fail (cuda_graph)
            if self.strict:
                raise RuntimeError(f"train.step cuda_graph: capturing the step failed: {exc}") from exc
            self.disable(f"capture failed ({type(exc).__name__}: {exc})")
            return self.body(batch, epoch, seeded_generator(noise_seed, self.device))

    def disable(self, reason: str) -> None:
        self.disabled_reason = reason
        self.entries.clear()
        self.log(f"CUDA graphs off for the rest of this run: {reason}; the step runs uncaptured (sync-free)")

    def _capture(self, key: bool, batch: dict, epoch: int) -> _Entry:
        model = self.body.model
        before = _Snapshot.take(model, self.device)
        static = {k: v.clone() for k, v in batch.items()}
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self.generator.manual_seed(0)
                self.body(static, epoch, self.generator)
        torch.cuda.current_stream(self.device).wait_stream(side)
        before.restore(model)
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.generator)
        self.generator.manual_seed(0)
        try:
            outputs = self._record(graph, lambda: self.body(static, epoch, self.generator))
        finally:  # also when capture fails: the uncaptured step then continues from the state it would have had
            before.restore(model)
        self.pool = graph.pool()
        entry = _Entry(graph, static, outputs, [p.grad for _, p in self.body.named_params],
                       list(self.body.grad_names))
        self.entries[key] = entry
        self.log(f"captured the training step in a CUDA graph (modulation window {'open' if key else 'closed'})")
        return entry

    def _record(self, graph: torch.cuda.CUDAGraph, body_call) -> StepOutputs:
        """Capture ``body_call`` into ``graph`` (one place, so that a CPU test can stand in for the capture)."""
        with torch.cuda.graph(graph, pool=self.pool):
            return body_call()

    def _replay(self, entry: _Entry, batch: dict, noise_seed: int) -> StepOutputs:
        for name, buffer in entry.static.items():
            buffer.copy_(batch[name], non_blocking=True)
        self.generator.manual_seed(noise_seed)
        entry.graph.replay()
        # the optimizer reads p.grad: point it at this graph's gradient buffers (another graph or an uncaptured
        # step may have replaced them)
        for (_, p), grad in zip(self.body.named_params, entry.grads):
            p.grad = grad
        self.body.grad_names = entry.grad_names
        self.replays += 1
        return entry.outputs

    def _reference(self, batch: dict, epoch: int, noise_seed: int) -> tuple[list, list, _Snapshot]:
        """The uncaptured body from the current state: (outputs, gradients) cloned, and the state it leaves."""
        ref = self.body(batch, epoch, seeded_generator(noise_seed, self.device))
        outputs = [t.clone() for t in _outputs_list(ref)]
        grads = [None if p.grad is None else p.grad.clone() for _, p in self.body.named_params]
        return outputs, grads, _Snapshot.take(self.body.model, self.device)

    def _verified_replay(self, entry: _Entry, batch: dict, epoch: int, noise_seed: int) -> StepOutputs:
        """Replay once, checked against the uncaptured body run twice from the same state. Where the two uncaptured
        runs agree bit for bit (a deterministic platform: every CPU op, most GPU kernels), the replay must too;
        where they do not (CUDA kernels that accumulate with atomics), the replay must lie within 8x
        their own difference on every tensor. Flags must always agree."""
        model = self.body.model
        before = _Snapshot.take(model, self.device)
        ref1 = self._reference(batch, epoch, noise_seed)
        before.restore(model)
        ref2 = self._reference(batch, epoch, noise_seed)
        before.restore(model)
        out = self._replay(entry, batch, noise_seed)
        labels = (["losses", "stats", "flags", "parameter flags", "telemetry"]
                  + [f"gradient of {n}" for n, _ in self.body.named_params]
                  + [f"buffer {n}" for n, _ in model.named_buffers()])
        graph = _outputs_list(out) + list(entry.grads) + list(model.buffers())
        eager1 = ref1[0] + ref1[1] + ref1[2].buffers
        eager2 = ref2[0] + ref2[1] + ref2[2].buffers
        failure, spread = _compare(labels, eager1, eager2, graph)
        if failure is None:
            entry.verified += 1
            how = "bitwise equal" if spread == 0 else f"within the uncaptured step's own spread, {spread:.2g}"
            self.log(f"CUDA graph replay {entry.verified} verified against the uncaptured step ({how})")
            return out
        reason = f"replay {entry.verified + 1} differs from the uncaptured step in {failure}"
        if self.strict:
            raise GraphNotExact(f"train.step cuda_graph: {reason}")
        self.disable(reason)
        ref1[2].restore(model)
        for (_, p), grad in zip(self.body.named_params, ref1[1]):
            p.grad = grad
        return StepOutputs(*ref1[0][:4], dataclasses.replace(out.tele, vector=ref1[0][4]))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double(), b.double()
    both_nan = a.isnan() & b.isnan()
    diff = torch.where(both_nan, torch.zeros_like(a), (a - b).abs())
    return diff.nan_to_num(nan=float("inf")).max() if diff.numel() else torch.zeros((), dtype=torch.float64,
                                                                                     device=a.device)


def _compare(labels: list[str], eager1: list, eager2: list, graph: list) -> tuple[str | None, float]:
    """(the first tensor where the graph is out of bounds, or None; the largest eager-vs-eager difference)."""
    pairs = []
    for label, e1, e2, g in zip(labels, eager1, eager2, graph):
        if e1 is None or g is None:
            if (e1 is None) != (g is None):
                return label, 0.0
            continue
        if e1.shape != g.shape or e1.dtype != g.dtype:
            return label, 0.0
        if not e1.is_floating_point():  # flags: always exactly
            if not bool((e1 == g).all()):
                return label, 0.0
            continue
        pairs.append((label, _max_diff(e1, e2), _max_diff(e1, g)))
    if not pairs:
        return None, 0.0
    spreads = torch.stack([d for _, d, _ in pairs]).cpu().tolist()  # host reads: verification steps only
    gaps = torch.stack([d for _, _, d in pairs]).cpu().tolist()
    deterministic = max(spreads) == 0.0
    for (label, _, _), spread, gap in zip(pairs, spreads, gaps):
        if gap > (0.0 if deterministic else 8.0 * spread):
            return f"{label} (graph {gap:.3g} from the uncaptured step, which differs {spread:.3g} from itself)", 0.0
    return None, max(spreads)
