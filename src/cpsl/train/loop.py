"""The training loop of one (row, seed) run: read it top to bottom in ``fit``.

Every row (a CP+SL ablation row, T0 or a Table 1 baseline: cpsl.config.rows) runs this same loop; what is row-specific
(the model: cpsl.nn.zoo; its objective, optimizer, schedule, step statistics, gradient hooks, extra optimisation,
per-epoch hook and per-run state: the row's recipe, cpsl.train.recipe) is asked of the row at fixed points. The
description below is the CP+SL rows' (their recipe: cpsl.model.recipe.CPSLRecipe).

Per step (cpsl.train.step): forward (bf16 autocast on CUDA when train.bf16), the Eq. 4 terms, backward (DDP
averages the gradients), ONE all-reduce of the unimodal absolute errors / sample count / non-finite flags / stop
requests, gradient modulation (Eq. 5-6, GE; only inside the gm window and per the switches), the collapse guard,
gradient clipping (train.grad_clip, 0 = off) and the AdamW step with linear warmup then linear decay.
``execution.step`` says when the host reads the step's numbers: every step (eager), once per epoch (sync_free), or
once per epoch with the step replayed from a CUDA graph (cuda_graph); auto = cuda_graph on one CUDA process
(where verified exact), sync_free under DDP on CUDA, eager on the CPU (where reading a value costs nothing); it is
resolved once per run, with the execution keys that decide how a step runs, into a ``StepPlan`` (``plan_step``).
Per epoch: the train means of every loss term (all-reduced over ranks), validation on rank 0 with
``run_inference`` (loss terms, MAE, Pearson corr), selection on the validation MAE (never the test set),
best.pt on improvement, history.csv, DVCLive, and state/last.pt for resuming.

Choices:
- Schedule: lr * step/warmup for the first round(warmup_ratio * total) steps, then linear decay to 0 at the
  last step (the Hugging Face "linear" schedule); weight decay on every parameter (the paper is silent).
- Determinism: the model is initialised from ``seed`` on every rank (DDP then broadcasts rank 0's copy anyway);
  afterwards each rank seeds its dropout / AME noise from (seed, rank). The GE noise comes from a generator
  seeded from (seed, global step), identical on every rank, so the modulated gradients stay identical.
- Resuming restores the model, optimizer, scheduler, every RNG, the sampler position and the partial sums of the
  epoch in progress, so on CPU a killed-and-resumed run ends with bit-identical weights.
- SIGTERM/SIGINT set a flag; the flag travels in the per-step all-reduce so that every rank stops after the
  same step; the state is then written and the process exits with 128 + signal number.
- Collapse guard: a non-finite loss term (on any rank) or gradient stops the run (eager: before that optimizer
  step; sync-free: at the end of that epoch, from the record kept on the device), reports epoch, step and the
  term or parameter, writes collapse.json and exits with EXIT_COLLAPSE; the last state/last.pt and best.pt (both
  from completed, finite epochs) are kept.
"""
from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from cpsl.config import rows
from cpsl.config.ablations import switches_for
from cpsl.errors import ParamsError
from cpsl.formats import run_folder, run_identity
from cpsl.formats.cache import content_identity, read_attrs, read_split
from cpsl.metrics.scores import pearson
from cpsl.nn import zoo
from cpsl.nn.inference import inference_batch_size, run_inference
from cpsl.runtime import deps
from cpsl.runtime.io_utils import write_json_atomic
from cpsl.train import checkpoint as ckpt
from cpsl.train.cuda_graphs import GraphedSteps
from cpsl.train.data import BatchPlan, gather_batch, load_tensors
from cpsl.train.distributed import DistContext, gather_objects
from cpsl.train.recipe import Recipe
from cpsl.train.recipes import recipe_for
from cpsl.train.step import Collapse, EpochSums, StepBody, Stepper

EXIT_OK = 0
EXIT_COLLAPSE = 3


@dataclass
class RunSpec:
    params: dict     # replaced by the row's run params (cpsl.config.rows.run_params: only what the row reads)
    ablation: str    # the row ID (a CP+SL row or a baseline); aliases resolved (B1 -> A1, ...)
    seed: int
    data_path: Path
    run_dir: Path
    text_model: str  # as configured (HF id, folder, package:<module>); resolved when the model is built
    identity: dict | None = None  # cpsl.formats.run_identity's record of this run (run_identity_of fills it in)

    def __post_init__(self):
        self.ablation = rows.canonical(self.ablation)
        self.params = rows.run_params(self.params, self.ablation)


@dataclass
class FitResult:
    exit_code: int
    model: torch.nn.Module | None  # the bare model after the last step (None when nothing was trained)
    message: str = ""


class StopFlag:
    """SIGTERM/SIGINT -> remember the signal; the loop checkpoints and exits at the end of the step."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, _frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def run_identity_of(spec: RunSpec) -> dict:
    """The run's identity (cpsl.formats.run_identity): only the params training reads (listing another row in
    `ablations`
    must not retrain this one), the cache's content (an edit that keeps its size and attributes is another run)
    and the code it runs (a state saved by other code is never resumed). Computed once per spec."""
    if spec.identity is None:
        spec.identity = run_identity.identity(spec.params, spec.ablation, spec.seed,
                                              cache=content_identity(spec.data_path),
                                              code=deps.code_hash("train", spec.ablation))
    return spec.identity


def run_fingerprint(spec: RunSpec) -> str:
    return run_identity.fingerprint(run_identity_of(spec))


def validate(model, arrays: dict, spec: RunSpec, recipe: Recipe, device) -> dict:
    """Rank 0: the recipe's loss terms (NaN for a term it does not compute on validation), MAE and Pearson r."""
    result = run_inference(model, arrays, inference_batch_size(spec.params), device,
                           losses=lambda out, batch: recipe.losses(out, batch))
    label = np.asarray(arrays["label"], dtype=np.float64)
    out = {f"valid/{t}": float(result.losses.get(t, float("nan"))) for t in recipe.terms}
    out["valid/mae"] = float(np.mean(np.abs(result.prediction.astype(np.float64) - label)))
    out["valid/corr"] = float(pearson(result.prediction, label))
    return out


def _log(ctx: DistContext, msg: str) -> None:
    if ctx.is_main:
        print(f"cpsl train: {msg}", file=sys.stderr, flush=True)


@dataclass
class _Run:
    """The objects of one run that every epoch uses (built once by ``_build``)."""

    model: torch.nn.Module
    net: torch.nn.Module  # LossStep, DDP-wrapped when distributed
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    plan: BatchPlan
    train: dict
    valid: dict | None
    meta: dict
    use_bf16: bool
    stepper: Stepper
    recipe: Recipe


def step_mode(configured: str, ctx: DistContext) -> str:
    """execution.step resolved for this process. auto: cuda_graph on one CUDA process, sync_free under DDP on CUDA,
    eager on the CPU (a host read costs nothing there, and eager stops a collapsing run at once)."""
    cuda_alone = ctx.device.type == "cuda" and not ctx.distributed
    if configured == "auto":
        if ctx.device.type != "cuda":
            return "eager"
        return "cuda_graph" if cuda_alone else "sync_free"
    if configured == "cuda_graph" and not cuda_alone:
        # ParamsError (a ValueError): the CLI answers one line, exit 2, not a traceback
        raise ParamsError(f"execution.step: cuda_graph needs one process on a CUDA device (this one: {ctx.device}, "
                          f"{ctx.world_size} process(es)); use auto, sync_free or eager")
    return configured


@dataclass(frozen=True)
class StepPlan:
    """How this process runs a training step: ``execution.step`` resolved once (``plan_step``), with the other
    execution keys that decide it. The loop and the step read this, never the execution section."""

    configured: str      # execution.step as written: auto | eager | sync_free | cuda_graph
    mode: str            # what runs here (step_mode): eager | sync_free | cuda_graph
    graph_scope: str     # execution.cuda_graph_scope: body | step (the AdamW step captured too)
    optimizer_impl: str  # execution.optimizer_impl: foreach | fused

    @property
    def strict(self) -> bool:
        """cuda_graph asked for by name: a failed capture fails the run (auto runs sync-free instead)."""
        return self.configured == "cuda_graph"

    def optimizer_in_graph(self, recipe: Recipe | None = None) -> bool:
        """Whether the CUDA graphs capture the AdamW step (never for a recipe whose step cannot be captured)."""
        blocked = recipe is not None and recipe.capture_blocker is not None
        return self.mode == "cuda_graph" and self.graph_scope == "step" and not blocked


def plan_step(execution: dict, ctx: DistContext) -> StepPlan:
    """The execution section resolved for this process; raises ValueError for an impossible execution.step."""
    return StepPlan(execution["step"], step_mode(execution["step"], ctx), execution["cuda_graph_scope"],
                    execution["optimizer_impl"])


def make_stepper(net, model, optimizer, scheduler, params: dict, switches, ctx: DistContext, seed: int,
                 batch_per_rank: int, use_bf16: bool, recipe: Recipe | None = None,
                 plan: StepPlan | None = None) -> Stepper:
    """The training step of ``plan`` (default: params' execution section resolved here) for this process (graphs
    for full batches of ``batch_per_rank``; with execution.cuda_graph_scope step they include ``optimizer``, which
    must then be capturable on a GPU); without a ``recipe``, the CP+SL recipe of ``switches``. A recipe whose step
    cannot be captured (``capture_blocker``) makes ``auto`` run sync-free, saying why, and ``cuda_graph`` fail."""
    plan = plan if plan is not None else plan_step(params["execution"], ctx)
    body = StepBody(net, model, params, switches, ctx, use_bf16, recipe=recipe)
    blocker = body.recipe.capture_blocker
    if plan.mode == "cuda_graph" and blocker and plan.strict:
        raise ParamsError(f"execution.step: cuda_graph is impossible for this row: {blocker}; use auto, sync_free "
                          f"or eager")
    graphs = (GraphedSteps(body, batch_per_rank, strict=plan.strict, log=lambda msg: _log(ctx, msg),
                           optimizer=optimizer if plan.optimizer_in_graph(body.recipe) else None)
              if plan.mode == "cuda_graph" else None)
    if graphs is not None and blocker:
        graphs.disable(blocker)
    return Stepper(plan.mode, body, optimizer, scheduler, ctx, seed, graphs)


def _build(spec: RunSpec, ctx: DistContext, switches, fingerprint: str) -> _Run:
    """``switches``: a CP+SL row's (None for a baseline, whose recipe and model come from its registry entries)."""
    params, tp, device = spec.params, spec.params["train"], ctx.device
    step_plan = plan_step(params["execution"], ctx)  # once, before any work: an impossible execution.step fails
    attrs = read_attrs(spec.data_path)
    # on a GPU the training split lives on the device (MOSI ~30 MB, MOSEI ~0.4 GB): batches are gathered there,
    # with no host-to-device copy (and so no synchronisation) per step
    train = {k: v.to(device) for k, v in load_tensors(spec.data_path, "train").items()}
    valid = read_split(spec.data_path, "valid") if ctx.is_main else None
    plan = BatchPlan(len(train["label"]), tp["batch_size"] // ctx.world_size, ctx.rank, ctx.world_size, spec.seed)
    total_steps = tp["epochs"] * plan.steps_per_epoch

    torch.manual_seed(spec.seed)
    model = zoo.build(params, spec.ablation, attrs["acoustic_dim"], attrs["visual_dim"], spec.text_model,
                      switches=switches).to(device)
    recipe = recipe_for(model, params, spec.ablation, ctx, train=train)
    step_fn = recipe.loss_module()
    # find_unused_parameters: a switched-off part (e.g. the variance head in C1) gets no gradient
    net = (DistributedDataParallel(step_fn, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True) if ctx.distributed else step_fn)
    optimizer = recipe.optimizer(tp, step_plan.optimizer_impl, device if step_plan.optimizer_in_graph(recipe) else None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, recipe.lr_factor(total_steps, tp))
    use_bf16 = bool(tp["bf16"]) and device.type == "cuda"
    stepper = make_stepper(net, model, optimizer, scheduler, params, switches, ctx, spec.seed,
                           plan.batch_per_rank, use_bf16, recipe=recipe, plan=step_plan)
    meta = {"params": params, "ablation": spec.ablation, "seed": spec.seed,
            "switches": switches.as_dict() if switches is not None else None,
            "acoustic_dim": int(attrs["acoustic_dim"]), "visual_dim": int(attrs["visual_dim"]),
            "text_model": spec.text_model, "fingerprint": fingerprint, "identity": run_identity_of(spec)}
    return _Run(model, net, optimizer, scheduler, plan, train, valid, meta, use_bf16, stepper, recipe)


def _end_epoch(run: _Run, state: ckpt.RunState, row: dict, spec: RunSpec, ctx: DistContext, live) -> None:
    """Rank 0: validation, selection on the validation MAE (never test), best.pt, history.csv, DVCLive."""
    row.update(validate(run.model, run.valid, spec, run.recipe, ctx.device))
    state.history.append(row)
    if math.isfinite(row["valid/mae"]) and row["valid/mae"] < state.best_mae:
        state.best = {"epoch": row["epoch"], "valid": {k: v for k, v in row.items() if k.startswith("valid/")}}
        run_folder.save_best(spec.run_dir, ckpt.cpu_state_dict(run.model), row["epoch"], state.best["valid"],
                             run.meta)
    run_folder.write_history(spec.run_dir, state.history, history_columns(run.recipe))
    live.log(row)


def history_columns(recipe: Recipe) -> tuple[str, ...]:
    """history.csv's columns for a row (the CP+SL rows: run_folder.HISTORY_COLUMNS)."""
    return run_folder.history_columns(recipe.terms, recipe.mean_columns, recipe.count_columns)


def _recipe_end_epoch(run: _Run, epoch: int, row: dict, ctx: DistContext) -> None:
    """The recipe's per-epoch hook on every rank, with rank 0's row (which alone has the validation metrics)."""
    if type(run.recipe).end_epoch is Recipe.end_epoch:
        return  # the recipe has no per-epoch hook: no collective
    run.recipe.end_epoch(epoch, gather_objects(row, ctx)[0])


def raise_if_collapsed(sums: EpochSums, epoch: int, start_step: int, start_global_step: int) -> None:
    """The deferred collapse guard (sync-free steps): raise Collapse for the first non-finite step recorded on
    the device since ``start_step`` of ``epoch`` (a host read: once per epoch and before a mid-epoch save)."""
    found = sums.collapse()
    if found is not None:
        index, what = found
        raise Collapse(epoch, start_step + index, start_global_step + index, what)


def fit(spec: RunSpec, ctx: DistContext) -> FitResult:
    tp = spec.params["train"]
    switches = None if rows.is_baseline(spec.ablation) else switches_for(spec.ablation)
    run_dir = spec.run_dir = Path(spec.run_dir)
    if tp["batch_size"] % ctx.world_size:
        raise ValueError(f"train.batch_size ({tp['batch_size']}) must be divisible by the world size "
                         f"({ctx.world_size})")
    wall_start = time.time()
    fingerprint = run_fingerprint(spec)
    run = _build(spec, ctx, switches, fingerprint)
    state_path = run_dir / run_folder.STATE_FILE
    state = ckpt.resume(state_path, run_dir, fingerprint, run.model, run.optimizer, run.scheduler, ctx,
                        lambda msg: _log(ctx, msg), recipe=run.recipe, columns=history_columns(run.recipe))
    wall_before = state.wall_s
    if state.global_step == 0:
        torch.manual_seed(spec.seed * 100_003 + ctx.rank)  # per-rank dropout / AME noise
    live = ckpt.LiveLog(run_dir, state.history, history_columns(run.recipe)) if ctx.is_main else None

    def save(epoch: int, step: int, sums: EpochSums | None) -> None:
        state.epoch, state.step_in_epoch, state.partial = epoch, step, sums.state() if sums else None
        state.wall_s = wall_before + time.time() - wall_start
        ckpt.save_state(state_path, state, run.model, run.optimizer, run.scheduler, ctx, recipe=run.recipe)

    def interrupted(signum: int, where: str) -> FitResult:
        _log(ctx, f"interrupted {where}: state saved to {state_path}; rerun the same command to resume")
        return FitResult(128 + (signum or signal.SIGTERM), run.model, "interrupted")

    bar = tqdm(total=tp["epochs"], initial=state.epoch, desc=f"{spec.ablation} seed {spec.seed}", unit="epoch",
               disable=not ctx.is_main, dynamic_ncols=True)
    try:
        with StopFlag() as stop:
            for epoch in range(state.epoch, tp["epochs"]):
                run.net.train()
                sums = EpochSums(ctx.device, state.partial, recipe=run.recipe)
                start_step = state.step_in_epoch
                steps = tqdm(run.plan.batches(epoch, start_step, ctx.device), total=run.plan.steps_per_epoch,
                             initial=start_step, desc=f"epoch {epoch}", unit="step", leave=False,
                             disable=not ctx.is_main, dynamic_ncols=True)
                stop_votes = False
                for step, index in enumerate(steps, start=start_step):
                    batch = gather_batch(run.train, index, ctx.device)
                    batch["index"] = index  # the segments' rows in the train split (per-segment recipe state)
                    _, stop_votes = run.stepper.step(batch, sums, epoch=epoch, step=step,
                                                     global_step=state.global_step, stop_requested=stop.signum > 0)
                    state.global_step += 1
                    # some rank got SIGTERM/SIGINT: every rank stops after this same step (at the end of an
                    # epoch, the epoch is finished first and its own state save covers it)
                    if stop_votes and step + 1 < run.plan.steps_per_epoch:
                        raise_if_collapsed(sums, epoch, start_step, state.global_step - (step + 1 - start_step))
                        save(epoch, step + 1, sums)
                        return interrupted(stop.signum, f"at epoch {epoch}, step {step + 1}")
                steps.close()
                stop_votes = run.stepper.end_of_epoch_votes() or stop_votes
                raise_if_collapsed(sums, epoch, start_step,
                                   state.global_step - (run.plan.steps_per_epoch - start_step))
                row = {"epoch": epoch, **sums.row(ctx)}
                state.conflicts += row.get("gm/conflicts", 0)  # Eq. 6 penalties (CP+SL rows only)
                if ctx.is_main:
                    _end_epoch(run, state, row, spec, ctx, live)
                    bar.set_postfix(valid_mae=f"{row['valid/mae']:.4f}",
                                    best_epoch=state.best["epoch"] if state.best else None)
                _recipe_end_epoch(run, epoch, row, ctx)
                bar.update(1)
                save(epoch + 1, 0, None)
                if stop_votes:
                    return interrupted(stop.signum, f"after epoch {epoch}")
    except Collapse as exc:
        kept = state_path if state_path.is_file() else "none yet: it collapsed in the first epoch"
        _log(ctx, f"{exc}. Run stopped; the last good checkpoint is kept ({kept}).")
        if ctx.is_main:
            write_json_atomic(run_dir / run_folder.COLLAPSE_FILE,
                              {**exc.report, "ablation": spec.ablation, "seed": spec.seed})
        return FitResult(EXIT_COLLAPSE, run.model, str(exc))
    finally:
        bar.close()
        if live is not None:
            live.close()

    if ctx.is_main:
        _write_summary(spec, run, state, ctx, wall_before + time.time() - wall_start)
    return FitResult(EXIT_OK, run.model, "finished")


def _write_summary(spec: RunSpec, run: _Run, state: ckpt.RunState, ctx: DistContext, wall_s: float) -> None:
    best = state.best
    if best is None:
        raise RuntimeError(f"{spec.run_dir}: no epoch had a finite validation MAE; no best.pt was written")
    run_folder.write_summary(spec.run_dir, {
        "fingerprint": state.fingerprint, "identity": run.meta["identity"], "params": spec.params,
        "switches": run.meta["switches"],
        "ablation": spec.ablation, "seed": spec.seed, "best_epoch": best["epoch"], "best_valid": best["valid"],
        "wall_time_s": wall_s, "steps": state.global_step, "steps_per_epoch": run.plan.steps_per_epoch,
        "conflicts_total": state.conflicts, "world_size": ctx.world_size, "device": str(ctx.device),
        "bf16": run.use_bf16, "text_model": spec.text_model, "step_mode": run.stepper.describe()})
    _log(ctx, f"done: best epoch {best['epoch']} valid MAE {best['valid']['valid/mae']:.4f} -> {spec.run_dir}")
