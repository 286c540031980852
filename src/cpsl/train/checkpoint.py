"""Everything a training run persists in its folder, and how it is read back.

    best.pt             {"model", "epoch", "valid": {metric: value}, "meta": {params, ablation, seed, switches,
                        acoustic_dim, visual_dim, text_model}}: the epoch with the lowest validation MAE.
    state/last.pt       the resumable state: model, optimizer, scheduler, position (epoch, step in epoch,
                        global step), history so far, best so far, and per rank the RNG states and the partial
                        sums of the epoch in progress. Written at the end of every epoch and on SIGTERM/SIGINT.
    history.csv         one row per epoch, columns HISTORY_COLUMNS (the report stage reads this file).
    dvclive/            the same per-epoch values as DVCLive metrics (plots for `dvc plots` / Studio).
    train_summary.json  params, switches, best epoch and metrics, wall time, steps, conflicts, world size.

Every .pt file loads with ``torch.load(weights_only=True)``: only tensors, numbers, strings, lists and dicts
(RNG states are stored as tensors and int lists, never as numpy or Python objects).
All writes are atomic (temporary file renamed into place), so a kill never leaves a truncated checkpoint.

A run is identified by a fingerprint of (params, ablation, seed, cache attributes and size): a state or
summary with another fingerprint belongs to a different run and is never resumed or reused.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from cpsl.errors import PipelineError
from cpsl.io_utils import atomic_path, write_json_atomic

LOSS_TERMS = ("total", "task", "recon", "uni", "div", "stat")
# epoch means of the modulation telemetry; mae_a/mae_v are the unimodal heads' training MAEs that drive Eq. 5
TELEMETRY = ("c_a", "c_v", "g_a", "g_v", "mae_a", "mae_v", "imbalance")
COUNTS = ("gm/conflicts", "gm/ge_steps")  # per epoch: Eq. 6 penalties applied, steps with GE noise
HISTORY_COLUMNS = (
    ("epoch",)
    + tuple(f"train/{t}" for t in LOSS_TERMS)
    + tuple(f"valid/{t}" for t in LOSS_TERMS)
    + ("valid/mae", "valid/corr")
    + tuple(f"gm/{t}" for t in TELEMETRY)
    + COUNTS
)

BEST_FILE = "best.pt"
STATE_FILE = "state/last.pt"
HISTORY_FILE = "history.csv"
SUMMARY_FILE = "train_summary.json"
DVCLIVE_DIR = "dvclive"


# ----------------------------------------------------------------------------------------------- identity
def run_fingerprint(params: dict, ablation: str, seed: int, cache_attrs: dict, cache_size: int) -> str:
    blob = json.dumps(
        {"params": params, "ablation": ablation, "seed": seed, "cache": cache_attrs, "cache_size": cache_size},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def finished_summary(run_dir: Path, fingerprint: str) -> dict | None:
    """The summary of a finished run with this fingerprint (its best.pt present), else None."""
    path = run_dir / SUMMARY_FILE
    if not path.is_file() or not (run_dir / BEST_FILE).is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return summary if summary.get("fingerprint") == fingerprint else None


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
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------- .pt files
def save_pt(path: Path, obj: dict) -> None:
    try:
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save(obj, tmp)
    except RuntimeError as exc:
        # torch's zip writer reports a failed write (full disk, quota) as "basic_ios::clear" or
        # "PytorchStreamWriter failed writing file"; the temporary is already gone, the old file kept
        free = shutil.disk_usage(path.parent).free
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"{path}: could not be written ({reason}); is the disk full? {free / 1e6:.0f} MB free "
                            f"now; free some space and rerun (the run resumes from its last saved state)") from exc


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
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        print(f"cpsl train: warning: {path} is unreadable ({reason}); discarding it and starting this run from "
              f"scratch", file=sys.stderr, flush=True)
        return None
    return state


def text_model_size(resolved: str) -> tuple[int | None, int]:
    """(vocabulary size, bytes of weights) of a text model folder or cached HF id; (None, 0) when unknown
    (e.g. not downloaded yet: the model loader then gives its own error)."""
    folder = Path(resolved)
    try:
        if folder.is_dir():
            vocab = json.loads((folder / "config.json").read_text()).get("vocab_size")
            weights = sum(p.stat().st_size for p in folder.iterdir()
                          if p.suffix in (".safetensors", ".bin", ".pt", ".pth") and p.is_file())
            return (int(vocab) if isinstance(vocab, int) else None), weights
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(resolved, "config.json")
        if not isinstance(config, str):
            return None, 0
        vocab = json.loads(Path(config).read_text()).get("vocab_size")
        weights = 0
        for name in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(resolved, name)
            if isinstance(found, str):
                weights = max(weights, Path(found).stat().st_size)
        return (int(vocab) if isinstance(vocab, int) else None), weights
    except (OSError, ValueError):
        return None, 0


def load_pt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def cpu_state_dict(module: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def save_best(run_dir: Path, model: torch.nn.Module, epoch: int, valid: dict, meta: dict) -> None:
    save_pt(run_dir / BEST_FILE, {"model": cpu_state_dict(model), "epoch": epoch, "valid": dict(valid), "meta": meta})


# ----------------------------------------------------------------------------------------------- history
def write_history(run_dir: Path, rows: list[dict]) -> None:
    with atomic_path(run_dir / HISTORY_FILE, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=HISTORY_COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _fmt(row[k]) for k in HISTORY_COLUMNS})


def _fmt(value) -> str:
    if isinstance(value, int):
        return str(value)
    return "nan" if math.isnan(value) else repr(float(value))


def read_history(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: (int(v) if k in ("epoch",) + COUNTS else float(v)) for k, v in row.items()}
                for row in csv.DictReader(fh)]


class LiveLog:
    """The DVCLive folder, rebuilt from the history on (re)start so a resumed run has exactly one step per
    epoch. Its contents are a view of ``history``: history.csv stays the contract other stages read."""

    def __init__(self, run_dir: Path, history: list[dict]):
        from dvclive import Live  # imported here: dvclive pulls in dvc/git helpers, only rank 0 needs it

        folder = run_dir / DVCLIVE_DIR
        if folder.exists():
            shutil.rmtree(folder)
        self.live = Live(str(folder), save_dvc_exp=False, dvcyaml=None, report=None)
        for row in history:
            self.log(row)

    def log(self, row: dict) -> None:
        self.live.step = int(row["epoch"])
        for key in HISTORY_COLUMNS[1:]:
            value = float(row[key])
            if math.isfinite(value):
                self.live.log_metric(key, value)
        self.live.next_step()

    def close(self) -> None:
        self.live.end()


def write_summary(run_dir: Path, summary: dict) -> None:
    write_json_atomic(run_dir / SUMMARY_FILE, summary)
