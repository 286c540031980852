"""Did a run's acoustic/visual path learn anything? One rule for every row (ours, with unimodal heads, or a
Table 1 baseline without them); evaluate writes the verdict to metrics.json, report counts it per row in
summary.json, and the table writers ask :func:`table_cell` / :func:`table1_suffix` per row. Torch-free and at the
package level, not inside either stage: both stages use it, and neither imports the other's internals.

Evidence, per stream m (acoustic, visual), each used only where the run has it:

1. **Unimodal head** (history.csv ``gm/mae_a``, ``gm/mae_v``: the epoch-mean training MAE of the head on Z_m):
   *flat* when its mean over the last ``HEAD_EPOCHS`` epochs is not below ``(1 - HEAD_TOLERANCE)`` times the
   training MAE of the best constant predictor (the median of the training labels: the lowest MAE a constant
   reaches; the mean's MAE is at least as large). A head that ends no better than a constant by a few percent
   learnt nothing. The last epochs, not the best one: on a small training set (the demo: 14 steps per epoch) an
   unlearnt head's epoch means scatter by a few percent, and the minimum of that scatter looks like learning.
2. **Reliance** (cpsl.evaluate.reliance: test MAE with m permuted across segments, minus intact; R draws):
   *within noise* when the mean delta is at most ``NOISE_Z`` standard errors of the draws
   (std over draws / sqrt(R)) or at most ``RELIANCE_FLOOR`` times the constant predictor's MAE, whichever
   is larger (the floor makes a delta of 1 % of the "learns nothing" error negligible however tight the draws).

A stream is *not learnt* when every piece of evidence it has says so (head flat AND reliance within noise;
a row without heads: reliance alone). The run is marked (``av_not_learnt``) when NEITHER stream was learnt.
A row without an a/v path (T0) is ``not_applicable``; a run with no evidence (no heads, no reliance draws)
is ``unknown``. The evidence for the mark is kept beside it, so a reader can check the verdict.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np

HEAD_TOLERANCE = 0.05
HEAD_EPOCHS = 3
NOISE_Z = 2.0
RELIANCE_FLOOR = 0.01
STREAMS = {"acoustic": "gm/mae_a", "visual": "gm/mae_v"}
MARK = "†"
SETTING = "train.lr_new_modules"
RULE = (f"a/v not learnt: for both streams, the unimodal head's training MAE over the last {HEAD_EPOCHS} epochs "
        f"(where the row has heads) is not {HEAD_TOLERANCE:.0%} below the best constant predictor's, AND the test MAE "
        f"change with the stream permuted is within max({NOISE_Z:g} standard errors over the permutation draws, "
        f"{RELIANCE_FLOOR:.0%} of that constant MAE)")


def hint(setting: str = SETTING) -> str:
    """What to change, naming ``setting``: the param that gives the row's new modules their learning rate."""
    return (f"if the acoustic/visual streams carry information, give the new modules their own learning rate "
            f"({setting}, e.g. 1e-3; docs/method.md)")


HINT = hint(f"{SETTING}; for a Table 1 baseline baselines.<name>.<dataset>.train.lr_new_modules")
FOOTNOTE = f"{MARK} {RULE}. {HINT[0].upper()}{HINT[1:]}."


def constant_predictor_mae(labels: Iterable[float]) -> float:
    """Training MAE of the best constant prediction (the labels' median)."""
    y = np.asarray(list(labels), dtype=np.float64)
    return float(np.mean(np.abs(y - np.median(y)))) if y.size else math.nan


def _finite(values) -> list[float]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out


def head_evidence(history: list[dict] | None, stream: str, constant_mae: float) -> dict | None:
    """{final_train_mae (mean of the last HEAD_EPOCHS epoch means), limit, flat}, or None when the run records
    no head."""
    values = _finite(row.get(STREAMS[stream]) for row in history or [])
    if not values or not math.isfinite(constant_mae):
        return None
    limit = (1.0 - HEAD_TOLERANCE) * constant_mae
    final = float(np.mean(values[-HEAD_EPOCHS:]))
    return {"final_train_mae": final, "limit": limit, "flat": final >= limit}


def reliance_evidence(reliance: Mapping | None, stream: str, constant_mae: float) -> dict | None:
    """{mean, se, threshold, within_noise} of the permuted-minus-intact test MAE, or None when not measured."""
    draws = _finite(((reliance or {}).get("draws") or {}).get(stream, {}).get("mae") or [])
    if not draws or not math.isfinite(constant_mae):
        return None
    mean = float(np.mean(draws))
    se = float(np.std(draws, ddof=1) / math.sqrt(len(draws))) if len(draws) >= 2 else math.nan
    threshold = max(NOISE_Z * se if math.isfinite(se) else 0.0, RELIANCE_FLOOR * constant_mae)
    return {"mean": mean, "se": se if math.isfinite(se) else None, "draws": len(draws), "threshold": threshold,
            "within_noise": mean <= threshold}


def assess(has_av_path: bool, history: list[dict] | None, reliance: Mapping | None, constant: float,
           note: str | None = None) -> dict:
    """The verdict for one run (stored as metrics.json ``learnt``): status learnt | not_learnt |
    not_applicable | unknown, ``av_not_learnt`` (the mark), and the evidence per stream. ``constant``: the
    training labels' :func:`constant_predictor_mae`. ``has_av_path``: False for a row whose prediction reads no
    acoustic/visual input (T0; ITHP, which uses them only as training targets: ``note`` says why)."""
    if not has_av_path:
        return {"status": "not_applicable", "av_not_learnt": False,
                "note": note or "the row has no acoustic/visual path"}
    streams, verdicts = {}, []
    for stream in STREAMS:
        head, rel = head_evidence(history, stream, constant), reliance_evidence(reliance, stream, constant)
        flags = [e for e in (head and head["flat"], rel and rel["within_noise"]) if e is not None]
        learnt = None if not flags else not all(flags)
        streams[stream] = {"learnt": learnt, "head": head, "reliance": rel}
        verdicts.append(learnt)
    if any(v is None for v in verdicts) and not any(verdicts):
        status = "unknown"
    else:
        status = "learnt" if any(verdicts) else "not_learnt"
    return {"status": status, "av_not_learnt": status == "not_learnt", "constant_predictor_train_mae": constant,
            "streams": streams, "rule": RULE}


def hint_line(run_name: str, setting: str = SETTING) -> str:
    """The one stderr line for a marked run; ``setting``: the param that gives the row's new modules their rate."""
    return f"{run_name}: the acoustic/visual path did not learn ({RULE}); {hint(setting)}"


def row_summary(per_seed: Mapping[int, Mapping | None]) -> dict:
    """summary.json ``av_learnt`` of one row: the seeds marked, and those without a verdict."""
    status = {int(s): (v or {}).get("status", "unknown") for s, v in per_seed.items()}
    marked = sorted(s for s, st in status.items() if st == "not_learnt")
    return {"marked_seeds": marked, "n_marked": len(marked), "n_seeds": len(status),
            "unknown_seeds": sorted(s for s, st in status.items() if st == "unknown"),
            "not_applicable": bool(status) and all(st == "not_applicable" for st in status.values())}


def table_cell(row: Mapping | None) -> str:
    """Table 2's "a/v not learnt" cell: n/a (no a/v path), ? (no verdict), or "k/n" seeds marked (+ MARK)."""
    if not row:
        return "?"
    if row.get("not_applicable"):
        return "n/a"
    if row["n_seeds"] and len(row["unknown_seeds"]) == row["n_seeds"]:
        return "?"
    cell = f"{row['n_marked']}/{row['n_seeds']}"
    return f"{cell} {MARK}" if row["n_marked"] else cell


def csv_cell(row: Mapping | None) -> str:
    """:func:`table_cell` without the mark, for the tables' CSV files."""
    return table_cell(row).replace(MARK, "").strip()


def table1_suffix(row: Mapping | None) -> str:
    """Appended to a Table 1 method name: MARK when some of the row's seeds are marked."""
    return f" {MARK}" if row and row.get("n_marked") else ""


def any_marked(rows: Iterable[Mapping | None]) -> bool:
    return any(r and r.get("n_marked") for r in rows)
