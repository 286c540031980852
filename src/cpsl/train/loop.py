"""The training loop of one (ablation, seed) run: read it top to bottom in ``fit``.

Per step: forward (bf16 autocast on CUDA when train.bf16), the Eq. 4 terms, backward (DDP averages the
gradients), ONE all-reduce of the unimodal absolute errors / sample count / non-finite flags / stop requests,
gradient modulation (Eq. 5-6, GE; only inside the gm window and per the switches), the collapse guard,
gradient clipping (train.grad_clip, 0 = off) and the AdamW step with linear warmup then linear decay.
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
- Collapse guard: a non-finite loss term (on any rank) or gradient stops the run before the optimizer step,
  reports epoch, step and the term or parameter, writes collapse.json and exits with EXIT_COLLAPSE; the last
  state/last.pt and best.pt (both from completed, finite epochs) are kept.
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
from cpsl.model.losses import total_loss
from cpsl.model.modulation import modulate_gradients
from cpsl.model.network import build_model
from cpsl.names import LOSS_TERMS
from cpsl.train import checkpoint as ckpt
from cpsl.train.data import BatchPlan, gather_batch, load_tensors
from cpsl.train.distributed import DistContext, all_reduce_sum

EXIT_OK = 0
EXIT_COLLAPSE = 3
_TERMS = LOSS_TERMS
# layout of the per-step all-reduced vector
_ABS_A, _ABS_V, _COUNT, _STOP, _NONFINITE = 0, 1, 2, 3, 4  # _NONFINITE.. : one slot per loss term


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


class Collapse(Exception):
    def __init__(self, epoch: int, step: int, global_step: int, what: str):
        self.report = {"epoch": epoch, "step_in_epoch": step, "global_step": global_step, "what": what}
        super().__init__(f"collapse guard: {what} at epoch {epoch}, step {step} (global step {global_step})")


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


def make_optimizer(model, tp: dict) -> torch.optim.Optimizer:
    """AdamW; the text encoder at train.lr, every new module (AME, fusion, heads) at train.lr_new_modules
    (null: train.lr, the paper's single rate). Both groups follow the same warmup/decay factor."""
    new_lr = tp["lr"] if tp["lr_new_modules"] is None else tp["lr_new_modules"]
    text = list(model.text_encoder.parameters())
    text_ids = {id(p) for p in text}
    new = [p for p in model.parameters() if id(p) not in text_ids]
    groups = [{"params": text, "lr": tp["lr"]}, {"params": new, "lr": new_lr}]
    return torch.optim.AdamW(groups, lr=tp["lr"], weight_decay=tp["weight_decay"], foreach=True)


def linear_warmup_decay(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


def noise_generator(seed: int, global_step: int, device: torch.device) -> torch.Generator:
    """The GE noise source of one step: same seed on every rank, a new stream every step. (The CPU generator
    keeps only 32 bits of its seed, so (seed, step) are packed into 32 bits: distinct below 10^6 steps.)"""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + global_step) % 2**32)


class EpochSums:
    """Running sums of the epoch in progress (this rank): loss terms weighted by batch size, telemetry.
    The loss sums stay on the device (no host sync per step); ``state()`` is what a mid-epoch checkpoint keeps."""

    def __init__(self, device: torch.device, state: dict | None = None):
        state = state or {"loss": [0.0] * len(_TERMS), "samples": 0, "tele": [0.0] * len(ckpt.TELEMETRY),
                          "tele_n": [0] * len(ckpt.TELEMETRY), "conflicts": 0, "ge_steps": 0}
        self.loss = torch.tensor(state["loss"], dtype=torch.float64, device=device)
        self.samples, self.conflicts = int(state["samples"]), int(state["conflicts"])
        self.ge_steps = int(state.get("ge_steps", 0))
        self.tele, self.tele_n = list(state["tele"]), list(state["tele_n"])

    def state(self) -> dict:
        return {"loss": self.loss.cpu().tolist(), "samples": self.samples, "tele": list(self.tele),
                "tele_n": list(self.tele_n), "conflicts": self.conflicts, "ge_steps": self.ge_steps}

    def add(self, losses: dict, n: int, tele: dict) -> None:
        self.loss += torch.stack([losses[t].detach() for t in _TERMS]).double() * n
        self.samples += n
        for i, key in enumerate(ckpt.TELEMETRY):
            if math.isfinite(tele[key]):  # g is nan (not measured) outside the modulation window
                self.tele[i] += tele[key]
                self.tele_n[i] += 1
        self.conflicts += int(tele["conflict_a"]) + int(tele["conflict_v"])
        self.ge_steps += int(tele["ge"])

    def row(self, ctx: DistContext) -> dict:
        """Epoch means; loss terms averaged over all ranks' samples (telemetry is identical on every rank)."""
        sums = torch.cat([self.loss, self.loss.new_tensor([float(self.samples)])])
        sums = all_reduce_sum(sums, ctx).cpu().tolist()
        row = {f"train/{t}": sums[i] / max(sums[-1], 1.0) for i, t in enumerate(_TERMS)}
        for i, key in enumerate(ckpt.TELEMETRY):
            row[f"gm/{key}"] = self.tele[i] / self.tele_n[i] if self.tele_n[i] else math.nan
        row["gm/conflicts"] = self.conflicts
        row["gm/ge_steps"] = self.ge_steps
        return row


class LossStep(torch.nn.Module):
    """Model forward + Eq. 4 in one module, returning only the loss terms and the detached unimodal
    predictions. DDP wraps this, so the tensors it sees are exactly those the loss depends on: parameters
    that only feed switched-off (detached) terms are then correctly found unused."""

    def __init__(self, model: torch.nn.Module, loss_params: dict, switches):
        super().__init__()
        self.model, self.loss_params, self.switches = model, loss_params, switches

    def forward(self, batch: dict):
        out = self.model(batch["input_ids"], batch["attention_mask"], batch["acoustic"], batch["visual"])
        losses = total_loss(out, batch["label"], self.loss_params, self.switches)
        return losses, {m: out.uni[m].detach() for m in ("a", "v")}


def train_step(net, model, batch: dict, optimizer, scheduler, ctx: DistContext, *, params: dict, switches,
               epoch: int, step: int, global_step: int, seed: int, use_bf16: bool, stop_requested: bool = False):
    """One optimisation step. Returns (loss terms, modulation telemetry, whether any rank asked to stop);
    raises Collapse before the optimizer step when a loss term or gradient is non-finite."""
    device, label = ctx.device, batch["label"]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
        losses, uni = net(batch)
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()  # under DDP the gradients are averaged over ranks when this returns

    # one collective per step: unimodal absolute errors, sample count, stop requests, non-finite terms
    stats = torch.cat([
        torch.stack([(uni["a"].float() - label).abs().sum(), (uni["v"].float() - label).abs().sum(),
                     torch.tensor(float(len(label)), device=device),
                     torch.tensor(float(stop_requested), device=device)]),
        (~torch.isfinite(torch.stack([losses[t].detach().float() for t in _TERMS]))).float(),
    ])
    stats = all_reduce_sum(stats, ctx).tolist()
    bad_terms = [t for i, t in enumerate(_TERMS) if stats[_NONFINITE + i] > 0]
    if bad_terms:
        raise Collapse(epoch, step, global_step, f"non-finite loss term(s) {', '.join(bad_terms)}")
    mae = {"a": stats[_ABS_A] / stats[_COUNT], "v": stats[_ABS_V] / stats[_COUNT]}

    # Eq. 5-6 and GE on the encoder gradients (a no-op outside the gm window / with the switches off)
    tele = modulate_gradients(model.modality_encoders(), mae, epoch, params["gm"], params["cp"], switches,
                              noise_generator(seed, global_step, device))
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm(grads)
    if not math.isfinite(grad_norm.item()):
        raise Collapse(epoch, step, global_step, _first_nonfinite_grad(model))
    if params["train"]["grad_clip"] > 0:
        torch.nn.utils.clip_grads_with_norm_(grads, params["train"]["grad_clip"], grad_norm)
    optimizer.step()
    scheduler.step()
    return losses, tele, stats[_STOP] > 0


def validate(model, arrays: dict, spec: RunSpec, switches, device) -> dict:
    result = run_inference(model, arrays, inference_batch_size(spec.params), device,
                           loss_params=spec.params["loss"], switches=switches)
    label = np.asarray(arrays["label"], dtype=np.float64)
    out = {f"valid/{t}": float(result.losses[t]) for t in _TERMS}
    out["valid/mae"] = float(np.mean(np.abs(result.prediction.astype(np.float64) - label)))
    out["valid/corr"] = float(pearson(result.prediction, label))
    return out


def _first_nonfinite_grad(model: torch.nn.Module) -> str:
    for name, p in model.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return f"non-finite gradient in parameter '{name}'"
    return "non-finite total gradient norm"


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


def _build(spec: RunSpec, ctx: DistContext, switches, fingerprint: str) -> _Run:
    params, tp, device = spec.params, spec.params["train"], ctx.device
    attrs = read_attrs(spec.data_path)
    train = load_tensors(spec.data_path, "train")
    valid = read_split(spec.data_path, "valid") if ctx.is_main else None
    plan = BatchPlan(len(train["label"]), tp["batch_size"] // ctx.world_size, ctx.rank, ctx.world_size, spec.seed)
    total_steps = tp["epochs"] * plan.steps_per_epoch

    torch.manual_seed(spec.seed)
    model = build_model(params, switches, attrs["acoustic_dim"], attrs["visual_dim"], spec.text_model).to(device)
    step_fn = LossStep(model, params["loss"], switches)
    # find_unused_parameters: a switched-off part (e.g. the variance head in C1) gets no gradient
    net = (DistributedDataParallel(step_fn, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True) if ctx.distributed else step_fn)
    optimizer = make_optimizer(model, tp)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, linear_warmup_decay(total_steps, round(tp["warmup_ratio"] * total_steps)))
    meta = {"params": params, "ablation": spec.ablation, "seed": spec.seed, "switches": switches.as_dict(),
            "acoustic_dim": int(attrs["acoustic_dim"]), "visual_dim": int(attrs["visual_dim"]),
            "text_model": spec.text_model, "fingerprint": fingerprint}
    return _Run(model, net, optimizer, scheduler, plan, train, valid, meta,
                use_bf16=bool(tp["bf16"]) and device.type == "cuda")


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


def fit(spec: RunSpec, ctx: DistContext) -> FitResult:
    params, tp = spec.params, spec.params["train"]
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
                steps = tqdm(run.plan.batches(epoch, start_step), total=run.plan.steps_per_epoch, initial=start_step,
                             desc=f"epoch {epoch}", unit="step", leave=False, disable=not ctx.is_main,
                             dynamic_ncols=True)
                for step, index in enumerate(steps, start=start_step):
                    batch = gather_batch(run.train, index, ctx.device)
                    losses, tele, stop_votes = train_step(
                        run.net, run.model, batch, run.optimizer, run.scheduler, ctx, params=params,
                        switches=switches, epoch=epoch, step=step, global_step=state.global_step, seed=spec.seed,
                        use_bf16=run.use_bf16, stop_requested=stop.signum > 0)
                    state.global_step += 1
                    sums.add(losses, len(batch["label"]), tele)
                    state.conflicts += int(tele["conflict_a"]) + int(tele["conflict_v"])
                    # some rank got SIGTERM/SIGINT: every rank stops after this same step (at the end of an
                    # epoch, the epoch is finished first and its own state save covers it)
                    if stop_votes and step + 1 < run.plan.steps_per_epoch:
                        save(epoch, step + 1, sums)
                        return interrupted(stop.signum, f"at epoch {epoch}, step {step + 1}")
                steps.close()
                row = {"epoch": epoch, **sums.row(ctx)}
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
        "bf16": run.use_bf16, "text_model": spec.text_model})
    _log(ctx, f"done: best epoch {best['epoch']} valid MAE {best['valid']['valid/mae']:.4f} -> {spec.run_dir}")
