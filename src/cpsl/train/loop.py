"""The training loop of one (ablation, seed) run: read it top to bottom in ``fit``.

Per step (cpsl.train.step): forward (bf16 autocast on CUDA when train.bf16), the Eq. 4 terms, backward (DDP
averages the gradients), ONE all-reduce of the unimodal absolute errors / sample count / non-finite flags / stop
requests, gradient modulation (Eq. 5-6, GE; only inside the gm window and per the switches), the collapse guard,
gradient clipping (train.grad_clip, 0 = off) and the AdamW step with linear warmup then linear decay.
``execution.step`` says when the host reads the step's numbers: every step (eager), once per epoch (sync_free), or
once per epoch with the step replayed from a CUDA graph (cuda_graph); auto = cuda_graph on one CUDA process
(where verified exact), sync_free under DDP on CUDA, eager on the CPU (where reading a value costs nothing).
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

from cpsl import deps, run_folder
from cpsl.ablations import canonical, switches_for
from cpsl.cache import read_attrs, read_split
from cpsl.config import stage_slice
from cpsl.io_utils import write_json_atomic
from cpsl.metrics import pearson
from cpsl.model.inference import inference_batch_size, run_inference
from cpsl.model.network import build_model
from cpsl.names import LOSS_TERMS
from cpsl.train import checkpoint as ckpt
from cpsl.train.cuda_graphs import GraphedSteps
from cpsl.train.data import BatchPlan, gather_batch, load_tensors
from cpsl.train.distributed import DistContext
from cpsl.train.step import Collapse, EpochSums, LossStep, StepBody, Stepper

EXIT_OK = 0
EXIT_COLLAPSE = 3
_TERMS = LOSS_TERMS


@dataclass
class RunSpec:
    params: dict
    ablation: str
    seed: int
    data_path: Path
    run_dir: Path
    text_model: str  # as configured (HF id, folder, package:<module>); resolved when the model is built


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


def run_fingerprint(spec: RunSpec) -> str:
    # only the params training reads (listing another row in `ablations` must not retrain this one), and the
    # code it runs: a state saved by other code is never resumed
    return ckpt.run_fingerprint(stage_slice(spec.params, "train"), canonical(spec.ablation), spec.seed,
                                read_attrs(spec.data_path), spec.data_path.stat().st_size,
                                code=deps.code_hash("train"))


def make_optimizer(model, tp: dict, impl: str = "foreach",
                   capturable_on: torch.device | None = None) -> torch.optim.Optimizer:
    """AdamW; the text encoder at train.lr, every new module (AME, fusion, heads) at train.lr_new_modules
    (null: train.lr, the paper's single rate). Both groups follow the same warmup/decay factor.
    ``impl`` (execution.optimizer_impl): ``foreach`` (a few dozen multi-tensor kernels per step) or ``fused`` (one
    fused kernel per parameter group and dtype); the same update up to float rounding. ``capturable_on`` (a CUDA
    device, for ``execution.cuda_graph_scope: step``): a capturable AdamW whose learning rates are tensors on that
    device, which the scheduler updates in place, so that a CUDA graph replaying the step reads the current rate."""
    new_lr = tp["lr"] if tp["lr_new_modules"] is None else tp["lr_new_modules"]
    text = list(model.text_encoder.parameters())
    text_ids = {id(p) for p in text}
    new = [p for p in model.parameters() if id(p) not in text_ids]
    capturable = capturable_on is not None

    def rate(value: float):
        return torch.tensor(float(value), device=capturable_on) if capturable else value

    groups = [{"params": text, "lr": rate(tp["lr"])}, {"params": new, "lr": rate(new_lr)}]
    kernels = {"fused": True} if impl == "fused" else {"foreach": True}
    optimizer = torch.optim.AdamW(groups, lr=tp["lr"], weight_decay=tp["weight_decay"], capturable=capturable,
                                  **kernels)
    if capturable:
        optimizer.register_load_state_dict_post_hook(lambda opt: _rates_on(opt, capturable_on))
    return optimizer


def _rates_on(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """After a resume: the loaded learning rates (read onto the CPU, or saved as floats) back as tensors on the
    device, which the graph then captures and the scheduler updates in place."""
    for group in optimizer.param_groups:
        lr = group["lr"]
        if not (isinstance(lr, torch.Tensor) and lr.device == torch.device(device)):
            group["lr"] = torch.as_tensor(float(lr), device=device)


def linear_warmup_decay(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


def validate(model, arrays: dict, spec: RunSpec, switches, device) -> dict:
    result = run_inference(model, arrays, inference_batch_size(spec.params), device,
                           loss_params=spec.params["loss"], switches=switches)
    label = np.asarray(arrays["label"], dtype=np.float64)
    out = {f"valid/{t}": float(result.losses[t]) for t in _TERMS}
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


def step_mode(configured: str, ctx: DistContext) -> str:
    """execution.step resolved for this process. auto: cuda_graph on one CUDA process, sync_free under DDP on CUDA,
    eager on the CPU (a host read costs nothing there, and eager stops a collapsing run at once)."""
    cuda_alone = ctx.device.type == "cuda" and not ctx.distributed
    if configured == "auto":
        if ctx.device.type != "cuda":
            return "eager"
        return "cuda_graph" if cuda_alone else "sync_free"
    if configured == "cuda_graph" and not cuda_alone:
        raise ValueError(f"execution.step: cuda_graph needs one process on a CUDA device (this one: {ctx.device}, "
                         f"{ctx.world_size} process(es)); use auto, sync_free or eager")
    return configured


def optimizer_in_graph(params: dict, ctx: DistContext) -> bool:
    """Whether this process captures the AdamW step in its CUDA graphs (execution.cuda_graph_scope: step)."""
    ex = params["execution"]
    return step_mode(ex["step"], ctx) == "cuda_graph" and ex["cuda_graph_scope"] == "step"


def make_stepper(net, model, optimizer, scheduler, params: dict, switches, ctx: DistContext, seed: int,
                 batch_per_rank: int, use_bf16: bool) -> Stepper:
    """The training step of execution.step for this process (graphs for full batches of ``batch_per_rank``; with
    execution.cuda_graph_scope step they include ``optimizer``, which must then be capturable on a GPU)."""
    mode = step_mode(params["execution"]["step"], ctx)
    body = StepBody(net, model, params, switches, ctx, use_bf16)
    graphs = (GraphedSteps(body, batch_per_rank, strict=params["execution"]["step"] == "cuda_graph",
                           log=lambda msg: _log(ctx, msg),
                           optimizer=optimizer if optimizer_in_graph(params, ctx) else None)
              if mode == "cuda_graph" else None)
    return Stepper(mode, body, optimizer, scheduler, ctx, seed, graphs)


def _build(spec: RunSpec, ctx: DistContext, switches, fingerprint: str) -> _Run:
    params, tp, device = spec.params, spec.params["train"], ctx.device
    step_mode(params["execution"]["step"], ctx)  # refuse an impossible execution.step before any work
    attrs = read_attrs(spec.data_path)
    # on a GPU the training split lives on the device (MOSI ~30 MB, MOSEI ~0.4 GB): batches are gathered there,
    # with no host-to-device copy (and so no synchronisation) per step
    train = {k: v.to(device) for k, v in load_tensors(spec.data_path, "train").items()}
    valid = read_split(spec.data_path, "valid") if ctx.is_main else None
    plan = BatchPlan(len(train["label"]), tp["batch_size"] // ctx.world_size, ctx.rank, ctx.world_size, spec.seed)
    total_steps = tp["epochs"] * plan.steps_per_epoch

    torch.manual_seed(spec.seed)
    model = build_model(params, switches, attrs["acoustic_dim"], attrs["visual_dim"], spec.text_model).to(device)
    step_fn = LossStep(model, params["loss"], switches)
    # find_unused_parameters: a switched-off part (e.g. the variance head in C1) gets no gradient
    net = (DistributedDataParallel(step_fn, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True) if ctx.distributed else step_fn)
    optimizer = make_optimizer(model, tp, params["execution"]["optimizer_impl"],
                               device if optimizer_in_graph(params, ctx) else None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, linear_warmup_decay(total_steps, round(tp["warmup_ratio"] * total_steps)))
    use_bf16 = bool(tp["bf16"]) and device.type == "cuda"
    stepper = make_stepper(net, model, optimizer, scheduler, params, switches, ctx, spec.seed, plan.batch_per_rank,
                           use_bf16)
    meta = {"params": params, "ablation": spec.ablation, "seed": spec.seed, "switches": switches.as_dict(),
            "acoustic_dim": int(attrs["acoustic_dim"]), "visual_dim": int(attrs["visual_dim"]),
            "text_model": spec.text_model, "fingerprint": fingerprint}
    return _Run(model, net, optimizer, scheduler, plan, train, valid, meta, use_bf16, stepper)


def _end_epoch(run: _Run, state: ckpt.RunState, row: dict, spec: RunSpec, switches, ctx: DistContext, live) -> None:
    """Rank 0: validation, selection on the validation MAE (never test), best.pt, history.csv, DVCLive."""
    row.update(validate(run.model, run.valid, spec, switches, ctx.device))
    state.history.append(row)
    if math.isfinite(row["valid/mae"]) and row["valid/mae"] < state.best_mae:
        state.best = {"epoch": row["epoch"], "valid": {k: v for k, v in row.items() if k.startswith("valid/")}}
        run_folder.save_best(spec.run_dir, ckpt.cpu_state_dict(run.model), row["epoch"], state.best["valid"],
                             run.meta)
    run_folder.write_history(spec.run_dir, state.history)
    live.log(row)


def raise_if_collapsed(sums: EpochSums, epoch: int, start_step: int, start_global_step: int) -> None:
    """The deferred collapse guard (sync-free steps): raise Collapse for the first non-finite step recorded on
    the device since ``start_step`` of ``epoch`` (a host read: once per epoch and before a mid-epoch save)."""
    found = sums.collapse()
    if found is not None:
        index, what = found
        raise Collapse(epoch, start_step + index, start_global_step + index, what)


def fit(spec: RunSpec, ctx: DistContext) -> FitResult:
    tp = spec.params["train"]
    switches = switches_for(spec.ablation)
    run_dir = spec.run_dir = Path(spec.run_dir)
    if tp["batch_size"] % ctx.world_size:
        raise ValueError(f"train.batch_size ({tp['batch_size']}) must be divisible by the world size "
                         f"({ctx.world_size})")
    wall_start = time.time()
    fingerprint = run_fingerprint(spec)
    run = _build(spec, ctx, switches, fingerprint)
    state_path = run_dir / run_folder.STATE_FILE
    state = ckpt.resume(state_path, run_dir, fingerprint, run.model, run.optimizer, run.scheduler, ctx,
                        lambda msg: _log(ctx, msg))
    wall_before = state.wall_s
    if state.global_step == 0:
        torch.manual_seed(spec.seed * 100_003 + ctx.rank)  # per-rank dropout / AME noise
    live = ckpt.LiveLog(run_dir, state.history) if ctx.is_main else None

    def save(epoch: int, step: int, sums: EpochSums | None) -> None:
        state.epoch, state.step_in_epoch, state.partial = epoch, step, sums.state() if sums else None
        state.wall_s = wall_before + time.time() - wall_start
        ckpt.save_state(state_path, state, run.model, run.optimizer, run.scheduler, ctx)

    def interrupted(signum: int, where: str) -> FitResult:
        _log(ctx, f"interrupted {where}: state saved to {state_path}; rerun the same command to resume")
        return FitResult(128 + (signum or signal.SIGTERM), run.model, "interrupted")

    bar = tqdm(total=tp["epochs"], initial=state.epoch, desc=f"{spec.ablation} seed {spec.seed}", unit="epoch",
               disable=not ctx.is_main, dynamic_ncols=True)
    try:
        with StopFlag() as stop:
            for epoch in range(state.epoch, tp["epochs"]):
                run.net.train()
                sums = EpochSums(ctx.device, state.partial)
                start_step = state.step_in_epoch
                steps = tqdm(run.plan.batches(epoch, start_step, ctx.device), total=run.plan.steps_per_epoch,
                             initial=start_step, desc=f"epoch {epoch}", unit="step", leave=False,
                             disable=not ctx.is_main, dynamic_ncols=True)
                stop_votes = False
                for step, index in enumerate(steps, start=start_step):
                    batch = gather_batch(run.train, index, ctx.device)
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
                state.conflicts += row["gm/conflicts"]
                if ctx.is_main:
                    _end_epoch(run, state, row, spec, switches, ctx, live)
                    bar.set_postfix(valid_mae=f"{row['valid/mae']:.4f}",
                                    best_epoch=state.best["epoch"] if state.best else None)
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
        _write_summary(spec, run, state, switches, ctx, wall_before + time.time() - wall_start)
    return FitResult(EXIT_OK, run.model, "finished")


def _write_summary(spec: RunSpec, run: _Run, state: ckpt.RunState, switches, ctx: DistContext, wall_s: float) -> None:
    best = state.best
    if best is None:
        raise RuntimeError(f"{spec.run_dir}: no epoch had a finite validation MAE; no best.pt was written")
    run_folder.write_summary(spec.run_dir, {
        "fingerprint": state.fingerprint, "params": spec.params, "switches": switches.as_dict(),
        "ablation": spec.ablation, "seed": spec.seed, "best_epoch": best["epoch"], "best_valid": best["valid"],
        "wall_time_s": wall_s, "steps": state.global_step, "steps_per_epoch": run.plan.steps_per_epoch,
        "conflicts_total": state.conflicts, "world_size": ctx.world_size, "device": str(ctx.device),
        "bf16": run.use_bf16, "text_model": spec.text_model, "step_mode": run.stepper.describe()})
    _log(ctx, f"done: best epoch {best['epoch']} valid MAE {best['valid']['valid/mae']:.4f} -> {spec.run_dir}")
