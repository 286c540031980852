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
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from cpsl.ablations import canonical, switches_for
from cpsl.config import stage_slice
from cpsl.cache import read_attrs, read_split
from cpsl.evaluate.metrics import pearson
from cpsl.io_utils import write_json_atomic
from cpsl.model.inference import inference_batch_size, run_inference
from cpsl.model.losses import total_loss
from cpsl.model.modulation import modulate_gradients
from cpsl.model.network import build_model
from cpsl.train import checkpoint as ckpt
from cpsl.train.data import BatchPlan, gather_batch, load_tensors
from cpsl.train.distributed import DistContext, all_reduce_sum, barrier, gather_objects

EXIT_OK = 0
EXIT_COLLAPSE = 3
COLLAPSE_FILE = "collapse.json"
_TERMS = ckpt.LOSS_TERMS
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
    # only the params training reads: listing another row in `ablations` must not retrain this one
    return ckpt.run_fingerprint(stage_slice(spec.params, "train"), canonical(spec.ablation), spec.seed,
                                read_attrs(spec.data_path), spec.data_path.stat().st_size)


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


def _fresh_start(run_dir: Path) -> None:
    """Remove outputs of an earlier, different run so a stale best.pt can never pass for this run's."""
    for name in (ckpt.BEST_FILE, ckpt.STATE_FILE, ckpt.HISTORY_FILE, ckpt.SUMMARY_FILE, COLLAPSE_FILE):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / ckpt.DVCLIVE_DIR, ignore_errors=True)


def _log(ctx: DistContext, msg: str) -> None:
    if ctx.is_main:
        print(f"cpsl train: {msg}", file=sys.stderr, flush=True)


def fit(spec: RunSpec, ctx: DistContext) -> FitResult:
    params, tp = spec.params, spec.params["train"]
    switches = switches_for(spec.ablation)
    run_dir, device = Path(spec.run_dir), ctx.device
    if tp["batch_size"] % ctx.world_size:
        raise ValueError(f"train.batch_size ({tp['batch_size']}) must be divisible by the world size ({ctx.world_size})")
    wall_start = time.time()

    # ---- data and model -----------------------------------------------------------------------------
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
            "text_model": spec.text_model}
    use_bf16 = bool(tp["bf16"]) and device.type == "cuda"

    # ---- fresh start or resume ----------------------------------------------------------------------
    fingerprint = run_fingerprint(spec)
    state_path = run_dir / ckpt.STATE_FILE
    state = ckpt.load_state(state_path)  # None (with a warning) when unreadable: a bad file must not block
    barrier(ctx)  # every rank has read the state before rank 0 may delete a stale one
    if state is not None and state["fingerprint"] != fingerprint:
        _log(ctx, f"{state_path} belongs to a run with other params/data; starting this run from scratch")
        state = None
    if state is not None and state["world_size"] != ctx.world_size:
        raise RuntimeError(f"{state_path} was written by {state['world_size']} processes, this run has "
                           f"{ctx.world_size}: resume with the same world size, or delete {state_path.parent}")
    if state is None:
        if ctx.is_main:
            _fresh_start(run_dir)
        torch.manual_seed(spec.seed * 100_003 + ctx.rank)  # per-rank dropout / AME noise
        epoch, start_step, global_step, history, best, conflicts, wall_before = 0, 0, 0, [], None, 0, 0.0
        partial = None
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        epoch, start_step, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        history, best, conflicts, wall_before = state["history"], state["best"], state["conflicts"], state["wall_s"]
        ckpt.restore_rng(state["ranks"][ctx.rank]["rng"])
        partial = state["ranks"][ctx.rank]["partial"]
        _log(ctx, f"resuming {run_dir} at epoch {epoch}, step {start_step} (global step {global_step})")
    live = ckpt.LiveLog(run_dir, history) if ctx.is_main else None

    def save_state(next_epoch: int, next_step: int, sums: EpochSums | None) -> None:
        ranks = gather_objects({"rng": ckpt.capture_rng(), "partial": sums.state() if sums else None}, ctx)
        if ctx.is_main:
            ckpt.save_pt(state_path, {
                "fingerprint": fingerprint, "world_size": ctx.world_size, "epoch": next_epoch,
                "step_in_epoch": next_step, "global_step": global_step, "model": ckpt.cpu_state_dict(model),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "ranks": ranks,
                "history": history, "best": best, "conflicts": conflicts,
                "wall_s": wall_before + time.time() - wall_start})

    # ---- epochs -------------------------------------------------------------------------------------
    bar = tqdm(total=tp["epochs"], initial=epoch, desc=f"{spec.ablation} seed {spec.seed}", unit="epoch",
               disable=not ctx.is_main, dynamic_ncols=True)
    try:
        with StopFlag() as stop:
            for epoch in range(epoch, tp["epochs"]):
                net.train()
                sums = EpochSums(device, partial)
                partial = None
                steps = tqdm(plan.batches(epoch, start_step), total=plan.steps_per_epoch, initial=start_step,
                             desc=f"epoch {epoch}", unit="step", leave=False, disable=not ctx.is_main,
                             dynamic_ncols=True)
                for step, index in enumerate(steps, start=start_step):
                    batch = gather_batch(train, index, device)
                    losses, tele, stop_votes = train_step(
                        net, model, batch, optimizer, scheduler, ctx, params=params, switches=switches,
                        epoch=epoch, step=step, global_step=global_step, seed=spec.seed, use_bf16=use_bf16,
                        stop_requested=stop.signum > 0)
                    global_step += 1
                    sums.add(losses, len(batch["label"]), tele)
                    conflicts += int(tele["conflict_a"]) + int(tele["conflict_v"])

                    # some rank got SIGTERM/SIGINT: every rank stops after this same step (at the end of an
                    # epoch, the epoch is finished first and its own state save covers it)
                    if stop_votes and step + 1 < plan.steps_per_epoch:
                        save_state(epoch, step + 1, sums)
                        _log(ctx, f"interrupted: state saved to {state_path} (epoch {epoch}, step {step + 1}); "
                                  f"rerun the same command to resume")
                        return FitResult(128 + (stop.signum or signal.SIGTERM), model, "interrupted")
                steps.close()
                start_step = 0

                # ---- end of epoch: train means, validation, selection, files -----------------------
                row = {"epoch": epoch, **sums.row(ctx)}
                if ctx.is_main:
                    row.update(validate(model, valid, spec, switches, device))
                    history.append(row)
                    mae_v = row["valid/mae"]
                    if math.isfinite(mae_v) and (best is None or mae_v < best["valid"]["valid/mae"]):
                        best = {"epoch": epoch, "valid": {k: v for k, v in row.items() if k.startswith("valid/")}}
                        ckpt.save_best(run_dir, model, epoch, best["valid"], meta)
                    ckpt.write_history(run_dir, history)
                    live.log(row)
                    bar.set_postfix(valid_mae=f"{mae_v:.4f}", best_epoch=best["epoch"] if best else None)
                bar.update(1)
                save_state(epoch + 1, 0, None)
                if stop_votes:
                    _log(ctx, f"interrupted after epoch {epoch}: state saved to {state_path}; rerun to resume")
                    return FitResult(128 + (stop.signum or signal.SIGTERM), model, "interrupted")
    except Collapse as exc:
        _log(ctx, f"{exc}. Run stopped; the last good checkpoint is kept ({state_path if state_path.is_file() else 'none yet: it collapsed in the first epoch'}).")
        if ctx.is_main:
            write_json_atomic(run_dir / COLLAPSE_FILE, {**exc.report, "ablation": spec.ablation, "seed": spec.seed})
        return FitResult(EXIT_COLLAPSE, model, str(exc))
    finally:
        bar.close()
        if live is not None:
            live.close()

    # ---- finished -----------------------------------------------------------------------------------
    if ctx.is_main:
        if best is None:
            raise RuntimeError(f"{run_dir}: no epoch had a finite validation MAE; no best.pt was written")
        ckpt.write_summary(run_dir, {
            "fingerprint": fingerprint, "params": params, "switches": switches.as_dict(), "ablation": spec.ablation,
            "seed": spec.seed, "best_epoch": best["epoch"], "best_valid": best["valid"],
            "wall_time_s": wall_before + time.time() - wall_start, "steps": global_step,
            "steps_per_epoch": plan.steps_per_epoch, "conflicts_total": conflicts, "world_size": ctx.world_size,
            "device": str(device), "bf16": use_bf16, "text_model": spec.text_model})
        _log(ctx, f"done: best epoch {best['epoch']} valid MAE {best['valid']['valid/mae']:.4f} -> {run_dir}")
    return FitResult(EXIT_OK, model, "finished")
