"""The resumable state of a training run (``state/last.pt``) and the DVCLive view of its history.

``RunState`` is everything ``fit`` carries from epoch to epoch besides the model, optimizer and scheduler:
the position (next epoch, step in it, global step), the history so far, the best epoch so far, conflict
count, wall time and, per rank, the partial sums of the epoch in progress. ``save_state`` writes it with
the model, optimizer, scheduler and every rank's RNG; ``resume`` reads it back or says why it cannot.

Every .pt file loads with ``torch.load(weights_only=True)``: only tensors, numbers, strings, lists and dicts
(RNG states are stored as tensors and int lists, never as numpy or Python objects). All writes are atomic.

A run is identified by a fingerprint of (params train reads, ablation, seed, the cache's content and the code train
runs: cpsl.formats.run_identity): a state with another fingerprint belongs to a different run and is never resumed.
A state is resumed only when the outputs it vouches for are still there: best.pt of its best epoch (an
engine deletes a stage's outputs before rerunning it; resuming would then skip writing them).
The other files of the run folder (names, readers, writers) belong to cpsl.formats.run_folder.
"""
from __future__ import annotations

import math
import random
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cpsl.errors import PipelineError
from cpsl.formats import run_folder
from cpsl.formats.run_folder import load_pt, save_pt
from cpsl.train.distributed import DistContext, barrier, gather_objects


# ----------------------------------------------------------------------------------------------- RNG
def capture_rng() -> dict:
    """torch (CPU and CUDA), numpy and Python RNG states in a weights_only-loadable form."""
    version, internal, gauss_next = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": [int(x) for x in internal], "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_state(path: Path) -> dict | None:
    """state/last.pt, or None (with a warning) when it is absent or unusable: empty or truncated by a crash
    outside our atomic write (disk full, copied by hand), not a state at all, or refused by weights_only. A
    state that cannot be read must never keep a run stuck; the run then starts from scratch."""
    if not path.is_file():
        return None
    try:
        state = load_pt(path)
        if not isinstance(state, dict) or not {"fingerprint", "world_size", "ranks"} <= set(state):
            raise ValueError("not a training state")
    except Exception as exc:  # noqa: BLE001 - torch raises assorted errors on damaged files
        reason = run_folder.load_error_reason(exc)  # torch's reason, whole, on one line
        print(f"cpsl train: warning: {path} is unreadable ({reason}); discarding it and starting this run from "
              f"scratch", file=sys.stderr, flush=True)
        return None
    return state


def cpu_state_dict(module: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


@dataclass
class RunState:
    """What a run carries between epochs (see the module docstring); ``partial`` is this rank's
    ``EpochSums.state()`` of the epoch in progress, None at an epoch boundary."""

    fingerprint: str
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list = field(default_factory=list)
    best: dict | None = None  # {"epoch": int, "valid": {"valid/<metric>": value}}
    conflicts: int = 0
    wall_s: float = 0.0
    partial: dict | None = None

    @property
    def best_mae(self) -> float:
        return self.best["valid"]["valid/mae"] if self.best else math.inf


_SHARED = ("fingerprint", "epoch", "step_in_epoch", "global_step", "history", "best", "conflicts", "wall_s")


def save_state(path: Path, state: RunState, model, optimizer, scheduler, ctx: DistContext, recipe=None) -> None:
    """Write state/last.pt (rank 0), with every rank's RNG and partial sums and the row's recipe state
    (cpsl.train.recipe: identical on every rank by the recipe's contract). A collective: call on every rank."""
    ranks = gather_objects({"rng": capture_rng(), "partial": state.partial}, ctx)
    if ctx.is_main:
        save_pt(path, {**{k: getattr(state, k) for k in _SHARED}, "world_size": ctx.world_size,
                       "model": cpu_state_dict(model), "optimizer": optimizer.state_dict(),
                       "scheduler": scheduler.state_dict(), "ranks": ranks,
                       "recipe": recipe.state_dict() if recipe is not None else {}})


def resume(path: Path, run_dir: Path, fingerprint: str, model, optimizer, scheduler, ctx: DistContext,
           log, recipe=None, columns=run_folder.HISTORY_COLUMNS) -> RunState:
    """The state to continue from: the saved one when it belongs to this run and its outputs are intact
    (model, optimizer, scheduler, the recipe's state and this rank's RNG restored), else a fresh one, after rank 0
    removed every file of the earlier run. ``columns``: the row's history.csv columns. A collective: call on every
    rank."""
    saved = load_state(path)  # None (with a warning) when unreadable: a bad file must not block
    best = _best_to_keep(saved, run_dir, fingerprint, ctx) if saved is not None else None
    barrier(ctx)  # every rank has read the state and best.pt before rank 0 may delete them
    if saved is not None and best is not _NOT_RESUMABLE:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if recipe is not None:
            recipe.load_state_dict(saved.get("recipe") or {})
        restore_rng(saved["ranks"][ctx.rank]["rng"])
        state = RunState(**{k: saved[k] for k in _SHARED}, partial=saved["ranks"][ctx.rank]["partial"])
        state.best = best
        if ctx.is_main:
            if best is None:
                (run_dir / run_folder.BEST_FILE).unlink(missing_ok=True)
            run_folder.write_history(run_dir, state.history, columns)  # an engine may have deleted it
        log(f"resuming {run_dir} at epoch {state.epoch}, step {state.step_in_epoch} "
            f"(global step {state.global_step})")
        return state
    if saved is not None:
        log(f"{path} {_why_not(saved, fingerprint)}; starting this run from scratch")
    if ctx.is_main:
        run_folder.clear_train_outputs(run_dir)
    return RunState(fingerprint)


_NOT_RESUMABLE = object()


def _why_not(saved: dict, fingerprint: str) -> str:
    if saved["fingerprint"] != fingerprint:
        return "belongs to a run with other params, data or code"
    return (f"vouches for {run_folder.BEST_FILE} of epoch {saved['best']['epoch']}, which is missing or another "
            f"one (deleted by a workflow engine before a rerun?)")


def _best_to_keep(saved: dict, run_dir: Path, fingerprint: str, ctx: DistContext):
    """The best-so-far record to resume with (None: no best.pt yet), or _NOT_RESUMABLE.

    best.pt must be the one the state vouches for; or one written by the interrupted attempt at the epoch the
    state restarts (killed between best.pt and the state): a checkpoint of this run, adopted as the best so far,
    which the redone epoch replaces only if it does better (on CPU it does exactly as well)."""
    if saved["fingerprint"] != fingerprint:
        return _NOT_RESUMABLE
    if saved["world_size"] != ctx.world_size:
        # execution.nproc is no param (it reruns nothing), but an interrupted run's per-rank RNG and sampler
        # position only make sense with the world size that saved them
        raise PipelineError(f"{run_dir / run_folder.STATE_FILE} was written by {saved['world_size']} processes, "
                            f"this run has {ctx.world_size}: resume with the same world size (execution.nproc "
                            f"{saved['world_size']}), or delete {run_dir / 'state'} to start it again")
    recorded = run_folder.best_record(run_dir)
    if recorded is not None and recorded["fingerprint"] == fingerprint:
        if saved["best"] is not None and recorded["epoch"] == saved["best"]["epoch"]:
            return saved["best"]
        if recorded["epoch"] == saved["epoch"] and saved["step_in_epoch"] == 0:
            return {"epoch": recorded["epoch"], "valid": recorded["valid"]}
    return None if saved["best"] is None else _NOT_RESUMABLE


class LiveLog:
    """The DVCLive folder, rebuilt from the history on (re)start so a resumed run has exactly one step per
    epoch. Its contents are a view of ``history``: history.csv stays the contract other stages read."""

    def __init__(self, run_dir: Path, history: list[dict], columns=run_folder.HISTORY_COLUMNS):
        from dvclive import Live  # imported here: dvclive pulls in dvc/git helpers, only rank 0 needs it

        folder = run_dir / run_folder.DVCLIVE_DIR
        if folder.exists():
            shutil.rmtree(folder)
        self.live = Live(str(folder), save_dvc_exp=False, dvcyaml=None, report=None)
        self.columns = tuple(columns)
        for row in history:
            self.log(row)

    def log(self, row: dict) -> None:
        self.live.step = int(row["epoch"])
        for key in self.columns[1:]:
            value = float(row[key])
            if math.isfinite(value):
                self.live.log_metric(key, value)
        self.live.next_step()

    def close(self) -> None:
        self.live.end()
