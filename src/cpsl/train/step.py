"""One optimisation step of ``fit``, in the three ways ``execution.step`` names.

Every way runs the same ``StepBody`` (forward with the Eq. 4 terms, backward, ONE all-reduce of the batch
statistics, Eq. 5-6 + GE on the encoder gradients, the gradient norm with its non-finite flags, clipping) and then
the AdamW step with its schedule. They differ only in when the host looks at the numbers:

- ``eager``: the reference. The host reads the step's statistics and gradient norm every step (two device
  synchronisations), raises the collapse guard before the optimizer step, and reads the telemetry.
- ``sync_free``: nothing is read back during an epoch. The Eq. 5-6 decisions, the telemetry sums and the
  collapse record stay on the device (``EpochSums``) and are read once per epoch (and before a mid-epoch
  checkpoint). The guard is deferred: the first non-finite step is recorded on the device with its loss terms and
  parameters, the run is stopped at the end of that epoch, and the same report and files as ``eager`` result
  (state/last.pt and best.pt of the last completed finite epoch; the collapsed epoch is never saved).
  Under DDP the stop votes of SIGTERM/SIGINT are read one step late, so every rank stops after the same step
  without waiting for the step in flight.
- ``cuda_graph``: ``sync_free`` with the body (``execution.cuda_graph_scope: step``: and the AdamW step) captured in a
  CUDA graph per static case (cpsl.train.cuda_graphs); one process on CUDA only.

Given the same state, all three produce the same losses, coefficients, telemetry and weights (tests/test_step_modes.py).
"""
from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass

import torch

from cpsl.config.names import LOSS_TERMS
from cpsl.train.distributed import DistContext, all_reduce_sum
from cpsl.train.recipe import StepTelemetry

STEP_MODES = ("auto", "eager", "sync_free", "cuda_graph")
# layout of the per-step all-reduced statistics: first the recipe's own (Recipe.stats_size; CP+SL: the unimodal
# absolute-error sums), then the sample count and the stop votes, then one slot per loss term counting the ranks
# where that term is non-finite. Offsets after the recipe's statistics:
COUNT, STOP, NONFINITE = 0, 1, 2


class Collapse(Exception):
    def __init__(self, epoch: int, step: int, global_step: int, what: str):
        self.report = {"epoch": epoch, "step_in_epoch": step, "global_step": global_step, "what": what}
        super().__init__(f"collapse guard: {what} at epoch {epoch}, step {step} (global step {global_step})")


def noise_seed(seed: int, global_step: int) -> int:
    """The GE noise seed of one step: same on every rank, a new stream every step. (The CPU generator keeps only
    32 bits of its seed, so (seed, step) are packed into 32 bits: distinct below 10^6 steps.)"""
    return (seed * 1_000_003 + global_step) % 2**32


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def noise_generator(seed: int, global_step: int, device: torch.device) -> torch.Generator:
    return seeded_generator(noise_seed(seed, global_step), device)


def cpsl_recipe():
    """The CP+SL recipe class (cpsl.model.recipe), the default of StepBody and EpochSums for the tests and benchmarks
    that build them by hand; ``cpsl train`` always passes its row's recipe (cpsl.train.recipes). Looked up by name
    so the generic step kit never imports the CP+SL model: an edit there reruns no baseline
    (cpsl.runtime.deps.row_files)."""
    return importlib.import_module("cpsl.model.recipe").CPSLRecipe


@dataclass
class StepOutputs:
    """What one step leaves on the device (nothing here has been read by the host)."""

    losses: torch.Tensor      # float32, the recipe's terms in order, detached
    stats: torch.Tensor       # float32, all-reduced: the recipe's statistics, COUNT, STOP, NONFINITE + i per term
    bad: torch.Tensor         # bool: each loss term non-finite (any rank), then the total gradient norm non-finite
    bad_params: torch.Tensor  # bool per parameter with a gradient (StepBody.grad_names): its gradient norm
    tele: StepTelemetry       # the recipe's step record (CP+SL: the modulation telemetry)


def grad_norms(grads: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-tensor L2 norms, total L2 norm), computed as torch.nn.utils.get_total_norm does for one device/dtype."""
    if grads[0].device.type == "cuda":
        norms = list(torch._foreach_norm(grads, 2.0))
    else:
        norms = [torch.linalg.vector_norm(g, 2.0) for g in grads]
    per_tensor = torch.stack(norms)
    return per_tensor, torch.linalg.vector_norm(per_tensor, 2.0)


class StepBody:
    """Everything of a step before the optimizer, as device work only: no value is read back, so the body can be
    captured in a CUDA graph (tests/test_step_modes.py checks that no host read happens). What is row-specific
    comes from ``recipe`` (cpsl.train.recipe); without one, the CP+SL recipe of ``switches``."""

    def __init__(self, net, model, params: dict, switches, ctx: DistContext, use_bf16: bool, recipe=None):
        self.net, self.model, self.params, self.switches, self.ctx = net, model, params, switches, ctx
        self.recipe = recipe if recipe is not None else cpsl_recipe()(model, params, None, ctx, switches=switches)
        self.terms = tuple(self.recipe.terms)
        self.count_at = self.recipe.stats_size  # where the loop's own statistics start in the all-reduced vector
        self.use_bf16 = use_bf16
        self.named_params = list(model.named_parameters())
        # static shapes except on the CPU: trimming all-padding positions reads the mask on the host (a device
        # sync, and a new shape per batch that no CUDA graph can replay); on the CPU that read is free and
        # trimming saves most of the compute of short segments. Every mode on a device trims alike.
        model.trim_padding = ctx.device.type == "cpu"
        self.grad_names: list[str] = []  # the parameters that had a gradient at the last call (bad_params order)

    @property
    def stop_index(self) -> int:
        return self.count_at + STOP

    def __call__(self, batch: dict, epoch: int, generator: torch.Generator | None,
                 stop_vote: bool = False) -> StepOutputs:
        device, label = self.ctx.device, batch["label"]
        self.model.zero_grad(set_to_none=True)
        # the autocast weight cache must be off under CUDA graph capture; it only saves repeated casts
        precision = (torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False) if self.use_bf16
                     else contextlib.nullcontext())
        with precision:
            losses, aux = self.net(batch)
        losses["total"].backward()  # under DDP the gradients are averaged over ranks when this returns
        loss_vector = torch.stack([losses[t].detach().float() for t in self.terms])

        # one collective per step: the recipe's statistics, sample count, stop votes, non-finite terms
        # (torch.full, not torch.tensor: a fill kernel, no host-to-device copy)
        stats = torch.cat([
            self.recipe.step_stats(aux, batch),
            torch.stack([torch.full((), float(len(label)), device=device),
                         torch.full((), float(stop_vote), device=device)]),
            (~torch.isfinite(loss_vector)).float(),
        ])
        stats = all_reduce_sum(stats, self.ctx)
        at = self.count_at
        tele = self.recipe.after_backward(stats[:at], stats[at + COUNT].double(), aux, batch, epoch, generator)

        with_grad = [(n, p) for n, p in self.named_params if p.grad is not None]
        self.grad_names = [n for n, _ in with_grad]
        per_tensor, total = grad_norms([p.grad for _, p in with_grad])
        bad = torch.cat([stats[at + NONFINITE:] > 0, ~torch.isfinite(total)[None]])
        clip = self.params["train"]["grad_clip"]
        if clip > 0:
            # the PARAMETERS: clip_grads_with_norm_ scales each argument's .grad (a gradient tensor has none, so
            # passing the gradients themselves scaled nothing); the norm is the device tensor, no host read
            torch.nn.utils.clip_grads_with_norm_([p for _, p in with_grad], clip, total)
        return StepOutputs(loss_vector, stats, bad, ~torch.isfinite(per_tensor), tele)


def collapse_what(bad: list[bool], bad_params: list[bool], grad_names: list[str], terms=LOSS_TERMS) -> str:
    """The collapse report's 'what' from a step's non-finite flags (host values); ``terms``: the recipe's."""
    terms = [t for t, b in zip(terms, bad) if b]
    if terms:
        return f"non-finite loss term(s) {', '.join(terms)}"
    for name, b in zip(grad_names, bad_params):
        if b:
            return f"non-finite gradient in parameter '{name}'"
    return "non-finite total gradient norm"


class EpochSums:
    """Running sums of the epoch in progress (this rank), kept on the device: loss terms weighted by batch size,
    the recipe's telemetry (means over the steps that measured it, and counts), and the first non-finite step of
    the epoch (the deferred collapse guard). Nothing is read back until ``state()``, ``row()`` or ``collapse()``;
    ``state()`` is what a mid-epoch checkpoint keeps. ``recipe`` (class or instance) gives the terms and telemetry
    columns; without one, the CP+SL recipe's."""

    def __init__(self, device: torch.device, state: dict | None = None, recipe=None):
        self.recipe = recipe if recipe is not None else cpsl_recipe()
        terms, means, counts = self.recipe.terms, self.recipe.mean_columns, self.recipe.count_columns
        state = state or {"loss": [0.0] * len(terms), "samples": 0, "tele": [0.0] * len(means),
                          "tele_n": [0] * len(means), "counts": [0] * len(counts)}
        f64 = {"dtype": torch.float64, "device": device}
        self.loss = torch.tensor(state["loss"], **f64)
        self.tele = torch.tensor(state["tele"], **f64)
        self.tele_n = torch.tensor(state["tele_n"], **f64)
        self.counts = torch.tensor([float(c) for c in state["counts"]], **f64)
        self.samples = int(state["samples"])
        # the deferred guard: steps added so far, the first bad one (-1: none) and its flags
        self.steps = torch.zeros((), dtype=torch.int64, device=device)
        self.bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.bad: torch.Tensor | None = None
        self.bad_params: torch.Tensor | None = None
        self.grad_names: list[str] = []

    def add(self, out: StepOutputs, n: int, grad_names: list[str]) -> None:
        self.loss += out.losses.double() * n
        self.samples += n
        values = self.recipe.means(out.tele)
        finite = torch.isfinite(values)  # e.g. CP+SL's g is nan (not measured) outside the modulation window
        self.tele += torch.where(finite, values, torch.zeros_like(values))
        self.tele_n += finite
        self.counts += self.recipe.counts(out.tele)
        if self.bad is None or self.bad_params.shape != out.bad_params.shape:
            self.bad, self.bad_params = torch.zeros_like(out.bad), torch.zeros_like(out.bad_params)
            self.grad_names = list(grad_names)
        first = out.bad.any() & (self.bad_step < 0)
        self.bad_step.copy_(torch.where(first, self.steps, self.bad_step))
        self.bad.copy_(torch.where(first, out.bad, self.bad))
        self.bad_params.copy_(torch.where(first, out.bad_params, self.bad_params))
        self.steps += 1

    def collapse(self) -> tuple[int, str] | None:
        """(index of the first non-finite step among those added, what) or None; a host read."""
        index = int(self.bad_step.item())
        if index < 0:
            return None
        return index, collapse_what(self.bad.tolist(), self.bad_params.tolist(), self.grad_names, self.recipe.terms)

    def state(self) -> dict:
        return {"loss": self.loss.cpu().tolist(), "samples": self.samples, "tele": self.tele.cpu().tolist(),
                "tele_n": [int(x) for x in self.tele_n.cpu().tolist()],
                "counts": [int(x) for x in self.counts.cpu().tolist()]}

    def row(self, ctx: DistContext) -> dict:
        """Epoch means; loss terms averaged over all ranks' samples (telemetry is identical on every rank)."""
        sums = torch.cat([self.loss, self.loss.new_tensor([float(self.samples)])])
        sums = all_reduce_sum(sums, ctx).cpu().tolist()
        row = {f"train/{t}": sums[i] / max(sums[-1], 1.0) for i, t in enumerate(self.recipe.terms)}
        tele, tele_n = self.tele.cpu().tolist(), self.tele_n.cpu().tolist()
        for i, key in enumerate(self.recipe.mean_columns):
            row[key] = tele[i] / tele_n[i] if tele_n[i] else float("nan")
        for key, count in zip(self.recipe.count_columns, self.counts.cpu().tolist()):
            row[key] = int(count)
        return row


class _StopVotes:
    """Whether some rank asked to stop (SIGTERM/SIGINT), as agreed by the per-step all-reduce. Under DDP the vote
    of step k is read while step k + 1 is queued: a pinned copy and an event, so the host never waits for the step
    in flight, and every rank stops after the same step (one later than the vote)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending = None

    def push_and_read_previous(self, votes: torch.Tensor) -> bool:
        previous, self.pending = self.pending, self._start_copy(votes)
        return previous is not None and self._read(previous)

    def flush(self) -> bool:
        """The vote still pending (end of an epoch): a host read."""
        previous, self.pending = self.pending, None
        return previous is not None and self._read(previous)

    def _start_copy(self, votes: torch.Tensor):
        if not self.cuda:
            return votes.detach().clone(), None
        host = torch.empty((), dtype=votes.dtype, pin_memory=True)
        host.copy_(votes, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event

    @staticmethod
    def _read(pending) -> bool:
        host, event = pending
        if event is not None:
            event.synchronize()
        return bool(host.item() > 0)


class Stepper:
    """One step in the configured way: ``step(...)`` returns the StepOutputs (already added to ``sums``) and
    whether every rank must stop after this step."""

    def __init__(self, mode: str, body: StepBody, optimizer, scheduler, ctx: DistContext, seed: int, graphs=None):
        if mode not in ("eager", "sync_free", "cuda_graph"):
            raise ValueError(f"execution.step: unknown mode {mode!r}")
        self.mode, self.body, self.optimizer, self.scheduler, self.ctx = mode, body, optimizer, scheduler, ctx
        self.seed, self.graphs = seed, graphs
        self.votes = _StopVotes(ctx.device)

    def step(self, batch: dict, sums: EpochSums, *, epoch: int, step: int, global_step: int,
             stop_requested: bool) -> tuple[StepOutputs, bool]:
        n = len(batch["label"])
        self.body.recipe.extra_step(self.body.net, batch, epoch, step)  # e.g. MMIM's stage 1 (none by default)
        optimizer_done = False
        if self.mode == "eager":
            out = self.body(batch, epoch, noise_generator(self.seed, global_step, self.ctx.device), stop_requested)
            stats, bad = out.stats.tolist(), out.bad.tolist()  # the per-step host reads of the reference step
            if any(bad):
                raise Collapse(epoch, step, global_step,
                               collapse_what(bad, out.bad_params.tolist(), self.body.grad_names, self.body.terms))
            stop_votes = stats[self.body.stop_index] > 0
        else:
            if self.graphs is not None and self.graphs.can_run(batch, epoch):
                out = self.graphs.run(batch, epoch, noise_seed(self.seed, global_step))
                optimizer_done = self.graphs.includes_optimizer  # execution.cuda_graph_scope: step
            else:  # a shape or case without a graph (the short last batch of an epoch) runs uncaptured
                out = self.body(batch, epoch, noise_generator(self.seed, global_step, self.ctx.device),
                                stop_requested)
            stop_votes = (self.votes.push_and_read_previous(out.stats[self.body.stop_index]) if self.ctx.distributed
                          else stop_requested)
        sums.add(out, n, self.body.grad_names)
        if not optimizer_done:
            self.optimizer.step()
        self.scheduler.step()
        return out, stop_votes

    def describe(self) -> str:
        """The mode that ran, for summary.json (cuda_graph says so when it fell back)."""
        if self.graphs is not None and self.graphs.disabled_reason:
            return f"sync_free (CUDA graphs off: {self.graphs.disabled_reason})"
        return self.mode

    def end_of_epoch_votes(self) -> bool:
        """Votes not read yet (sync-free DDP: the last step's)."""
        return self.votes.flush() if self.mode != "eager" and self.ctx.distributed else False
