"""The run folder ``results/<dataset>/<ablation>-seed<k>/``: the one owner of its file names, their
readers and their writers (train writes, evaluate and report read; docs/DESIGN.md has the layout).

    best.pt             the validation-selected checkpoint: {"model", "epoch", "valid", "meta"}
    history.csv         one row per epoch, columns HISTORY_COLUMNS
    train_summary.json  params, switches, best epoch, timing; "fingerprint" identifies the run
    dvclive/            the history as DVCLive metrics (written by cpsl.train.checkpoint.LiveLog)
    state/last.pt       resumable training state (not a pipeline output; cpsl.train.checkpoint)
    collapse.json       only when the collapse guard stopped the run
    metrics.json        written by evaluate
    predictions.csv     written by evaluate: split, segment_id, label, prediction (text cells that a spreadsheet
                        would run as a formula get a leading ' : cpsl.runtime.io_utils.spreadsheet_text)

Every write is atomic (cpsl.runtime.io_utils.atomic_path). torch is imported only by the .pt helpers, so the report
stage reads this folder without loading it.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
from pathlib import Path

from cpsl.config.names import COUNTS, LOSS_TERMS, TELEMETRY
from cpsl.config.rows import ROWS
from cpsl.errors import PipelineError
from cpsl.runtime.io_utils import atomic_path, plain_text, spreadsheet_text, write_json_atomic

BEST_FILE = "best.pt"
STATE_FILE = "state/last.pt"
HISTORY_FILE = "history.csv"
SUMMARY_FILE = "train_summary.json"
DVCLIVE_DIR = "dvclive"
COLLAPSE_FILE = "collapse.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"

# the outputs each stage declares to the engines (Snakefile, dvc.yaml): a stage is done only when all exist
TRAIN_OUTPUTS = (BEST_FILE, HISTORY_FILE, SUMMARY_FILE, DVCLIVE_DIR)
EVALUATE_OUTPUTS = (METRICS_FILE, PREDICTIONS_FILE)
# files train writes atomically: a SIGKILLed run leaves `.<name>.*.tmp` next to them
TRAIN_FILES = (BEST_FILE, STATE_FILE, HISTORY_FILE, SUMMARY_FILE, COLLAPSE_FILE)

def history_columns(terms, means=(), counts=()) -> tuple[str, ...]:
    """history.csv's columns for a row whose recipe has loss ``terms`` ("total" first) and per-epoch telemetry
    columns ``means`` (averaged over steps) and ``counts`` (summed): cpsl.train.recipe."""
    return (("epoch",) + tuple(f"train/{t}" for t in terms) + tuple(f"valid/{t}" for t in terms)
            + ("valid/mae", "valid/corr") + tuple(means) + tuple(counts))


# the CP+SL rows' columns: the Eq. 4 terms and the modulation telemetry (any row: the columns of its recipe)
HISTORY_COLUMNS = history_columns(LOSS_TERMS, tuple(f"gm/{t}" for t in TELEMETRY), COUNTS)
PREDICTION_COLUMNS = ("split", "segment_id", "label", "prediction")
META_KEYS = ("params", "ablation", "seed", "acoustic_dim", "visual_dim", "text_model")


class RunFolderError(PipelineError, ValueError):
    """A missing or malformed file of a run folder; the message names the file."""


# ----------------------------------------------------------------------------------------------- .pt files
def save_pt(path: Path, obj: dict) -> None:
    import torch

    try:
        with atomic_path(path, suffix=".pt") as tmp:
            # through a Python file object: a failed write then raises an OSError with its errno (file-size
            # limit, full disk), which atomic_path names; torch's own path writer only says "basic_ios::clear"
            with open(tmp, "wb") as fh:
                torch.save(obj, fh)
    except RuntimeError as exc:
        # a failed write whose errno nobody kept; the temporary is already gone, the old file kept
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise PipelineError(f"{path}: could not be written ({reason}); check the free space and the file-size "
                            f"limit (`ulimit -f`), then rerun (the run resumes from its last saved state)") from exc


def load_pt(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def save_best(run_dir: Path, state_dict: dict, epoch: int, valid: dict, meta: dict) -> None:
    save_pt(Path(run_dir) / BEST_FILE, {"model": state_dict, "epoch": epoch, "valid": dict(valid), "meta": meta})


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# torch's weights_only refusal is a paragraph of advice; its reason follows this marker
_UNPICKLER_REASON = "WeightsUnpickler error:"


def load_error_reason(exc: BaseException) -> str:
    """Why torch.load refused a file, as one whole sentence on one line: torch's reason without its paragraphs of
    advice (a weights_only refusal names the offending global after "WeightsUnpickler error:"), never cut inside."""
    text = _ANSI.sub("", str(exc))
    if _UNPICKLER_REASON in text:
        text = text.split(_UNPICKLER_REASON, 1)[1]
    paragraph = next((p for p in re.split(r"\n\s*\n", text) if p.strip()), "")  # the reason's paragraph
    sentence = re.split(r"(?<=\.) (?=[A-Z])", " ".join(paragraph.split()), maxsplit=1)[0].rstrip(".")
    return sentence or type(exc).__name__


def named_run(run_dir: Path) -> tuple[str, int] | None:
    """(row, seed) of a folder named ``<row>-seed<k>`` (cpsl.config.paths.run_dir), else None."""
    named = re.match(r"^(?P<ablation>.+)-seed(?P<seed>\d+)$", Path(run_dir).name)
    return (named["ablation"], int(named["seed"])) if named else None


def retrain_hint(run_dir: Path) -> str:
    named = named_run(run_dir)
    command = f"cpsl train --ablation {named[0]} --seed {named[1]}" if named else "cpsl train"
    return f"rerun `{command}` (it trains this run again), then evaluate"


def load_best(run_dir: Path) -> dict:
    """best.pt, checked: loads with weights_only=True and has the keys evaluate needs."""

    path = Path(run_dir) / BEST_FILE
    if not path.is_file():
        raise RunFolderError(f"{run_dir}: no {BEST_FILE} in this run folder (run 'cpsl train' for it first)")
    try:
        best = load_pt(path)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types; the message must name the file
        raise RunFolderError(f"{path}: cannot be loaded with weights_only=True ({load_error_reason(exc)}): a damaged "
                             f"or foreign checkpoint; {retrain_hint(run_dir)}") from exc
    for key in ("model", "epoch", "meta"):
        if key not in best:
            raise RunFolderError(f"{path}: missing key '{key}'; {retrain_hint(run_dir)}")
    missing = [k for k in META_KEYS if k not in best["meta"]]
    if missing:
        raise RunFolderError(f"{path}: 'meta' lacks {missing}; {retrain_hint(run_dir)}")
    if best["meta"]["ablation"] not in ROWS:
        raise RunFolderError(f"{path}: unknown row {best['meta']['ablation']!r}")
    return best


def _read_record(path: Path) -> dict:
    import torch

    # mmap: only the small fields are read, not the weights
    best = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {"epoch": int(best["epoch"]), "fingerprint": best["meta"].get("fingerprint"), "valid": dict(best["valid"])}


def best_problem(run_dir: Path, fingerprint: str) -> str | None:
    """Why best.pt cannot count as this run's checkpoint, or None when it can: it must be a regular file (not a
    symbolic link, whose target can change or vanish behind the run's back) that loads with weights_only=True
    and records this run's fingerprint."""
    path = Path(run_dir) / BEST_FILE
    if path.is_symlink():
        return f"{path} is a symbolic link (to {os.readlink(path)}), not a regular file"
    if not path.is_file():
        return f"{path} is missing" if not path.exists() else f"{path} is not a regular file"
    try:
        record = _read_record(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable best.pt is a damaged one
        return f"{path} cannot be loaded with weights_only=True ({load_error_reason(exc)})"
    if record["fingerprint"] != fingerprint:
        return f"{path} was written by another run (other params, data or code)"
    return None


def best_record(run_dir: Path) -> dict | None:
    """{"epoch", "fingerprint", "valid"} recorded in best.pt, or None when it is absent, unreadable or not a
    regular file (best_problem)."""
    path = Path(run_dir) / BEST_FILE
    if path.is_symlink() or not path.is_file():
        return None
    try:
        return _read_record(path)
    except Exception:  # noqa: BLE001 - any unreadable best.pt means "no usable best.pt"
        return None


# ----------------------------------------------------------------------------------------------- history
def write_history(run_dir: Path, rows: list[dict], columns=HISTORY_COLUMNS) -> None:
    """history.csv with ``columns`` (the row's: :func:`history_columns`)."""
    with atomic_path(Path(run_dir) / HISTORY_FILE, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _fmt(row[k]) for k in columns})


def _fmt(value) -> str:
    if isinstance(value, int):
        return str(value)
    return "nan" if math.isnan(value) else repr(float(value))


def read_history(path: Path) -> list[dict]:
    """history.csv -> one dict per epoch: ``epoch`` and the counts as int, every other column float (an empty
    cell is NaN). Columns a run did not record are simply absent. Errors name the file, line and column."""
    path = Path(path)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "epoch" not in reader.fieldnames:
            raise RunFolderError(f"{path}: history.csv needs an 'epoch' column (got {reader.fieldnames})")
        rows = []
        for line, raw in enumerate(reader, start=2):
            row = {}
            for name, cell in raw.items():
                cell = (cell or "").strip()
                try:
                    value = float(cell) if cell else math.nan
                except ValueError:
                    raise RunFolderError(f"{path}: line {line}, column {name!r}: {cell!r} is not a number") from None
                row[name] = int(value) if name in ("epoch",) + COUNTS and math.isfinite(value) else value
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------- evaluate
def write_predictions(run_dir: Path, rows: list[tuple[str, str, float, float]]) -> None:
    with atomic_path(Path(run_dir) / PREDICTIONS_FILE, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(PREDICTION_COLUMNS)
            # repr of the float32 value widened to float64: exact, so the report recomputes identical metrics
            writer.writerows((spreadsheet_text(s), spreadsheet_text(seg), repr(float(lab)), repr(float(pred)))
                             for s, seg, lab, pred in rows)


def read_predictions(run_dir: Path, split: str = "test") -> dict[str, tuple[float, float]]:
    """predictions.csv rows of ``split`` -> segment_id -> (label, prediction)."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        raise RunFolderError(f"{path}: missing (the paired bootstrap needs each run's test predictions)")
    out: dict[str, tuple[float, float]] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not set(PREDICTION_COLUMNS) <= set(reader.fieldnames):
            raise RunFolderError(f"{path}: needs columns {sorted(PREDICTION_COLUMNS)}, has {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            if plain_text(row["split"]) != split:
                continue
            try:
                out[plain_text(row["segment_id"])] = (float(row["label"]), float(row["prediction"]))
            except ValueError:
                raise RunFolderError(f"{path}: line {line}: label/prediction not numbers: {row}") from None
    if not out:
        raise RunFolderError(f"{path}: no {split} rows")
    return out


def write_metrics(run_dir: Path, metrics: dict) -> None:
    write_json_atomic(Path(run_dir) / METRICS_FILE, metrics)


def read_json(path: Path) -> dict:
    try:
        obj = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise RunFolderError(f"{path}: must be a JSON object")
    return obj


def read_metrics(run_dir: Path) -> dict:
    return read_json(Path(run_dir) / METRICS_FILE)


def has_metrics(run_dir: Path) -> bool:
    return (Path(run_dir) / METRICS_FILE).is_file()


# ----------------------------------------------------------------------------------------------- train summary
def write_summary(run_dir: Path, summary: dict) -> None:
    write_json_atomic(Path(run_dir) / SUMMARY_FILE, summary)


def read_summary(run_dir: Path) -> dict | None:
    """train_summary.json, or None when the run has none (not finished)."""
    path = Path(run_dir) / SUMMARY_FILE
    return read_json(path) if path.is_file() else None


def finished_summary(run_dir: Path, fingerprint: str) -> tuple[dict | None, str | None]:
    """(summary, None) for a finished run with this fingerprint whose every declared output (TRAIN_OUTPUTS) is
    present and whose best.pt is intact (best_problem), else (None, why) where ``why`` says what is wrong with
    a run that otherwise looks finished (None for a run that is simply not finished): an engine deletes outputs
    before rerunning a stage, and a run missing or with a damaged output must be redone, never reported as done."""
    run_dir = Path(run_dir)
    if not all((run_dir / name).exists() or (run_dir / name).is_symlink() for name in TRAIN_OUTPUTS):
        return None, None
    try:
        summary = read_summary(run_dir)
    except RunFolderError:
        return None, None
    if summary is None or summary.get("fingerprint") != fingerprint:
        return None, None
    problem = best_problem(run_dir, fingerprint)
    return (summary, None) if problem is None else (None, problem)


def clear_evaluate_outputs(run_dir: Path) -> list[str]:
    """Remove the evaluate outputs (EVALUATE_OUTPUTS) before a training writes a new best.pt: metrics of the
    earlier checkpoint must never pass for the new one's. Returns the names removed."""
    removed = []
    for name in EVALUATE_OUTPUTS:
        path = Path(run_dir) / name
        if path.exists() or path.is_symlink():
            path.unlink()
            removed.append(name)
    return removed


def clear_train_outputs(run_dir: Path) -> None:
    """Remove what an earlier, different run wrote, so a stale best.pt can never pass for this run's."""
    run_dir = Path(run_dir)
    for name in TRAIN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / DVCLIVE_DIR, ignore_errors=True)
