"""Sentiment metrics for continuous predictions in [-3, 3], in every convention published MSA code uses.

Conventions (docs/metrics.md has the full discussion):

* ``acc2_nonzero`` / ``f1_nonzero``: negative vs positive with zero-LABELLED segments left out.
  Truth is ``label > 0``, prediction is ``prediction > 0`` (a prediction of exactly 0 counts as
  negative, as in the MMSA/Self-MM reference code). This is the primary convention of our tables.
* ``acc2_haszero`` / ``f1_haszero``: negative (< 0) vs non-negative (>= 0) over all segments,
  for both label and prediction.
* F1 is the support-weighted F1 over the two classes (``sklearn.metrics.f1_score(average="weighted")``;
  a class that is never predicted has precision 0, hence F1 0, as sklearn's ``zero_division=0``).
* ``mae`` and ``corr`` (Pearson) over ALL segments.
* ``mae_nonzero_subset`` / ``corr_nonzero_subset``: the same on non-zero-label segments only. Some
  published code reports these as "MAE"/"Corr"; they are NOT comparable with ``mae``/``corr``.
* ``acc7`` / ``acc5``: clip label and prediction to [-3, 3] / [-2, 2] and round to the nearest
  integer with ties rounded HALF AWAY FROM ZERO (2.5 -> 3, -0.5 -> -1). ``np.round`` rounds half
  to even (2.5 -> 2, -0.5 -> 0), which matters here because averaged annotator labels often end
  in .5; we choose the schoolbook rule and state it, rather than inherit numpy's default silently.

Undefined values are NaN, never an exception: Pearson correlation when either side is constant or
has fewer than 2 points, and every non-zero metric when no segment has a non-zero label.
Accuracies and F1 scores are percentages (0-100), like the paper's tables; MAE and correlation are raw.
"""
from __future__ import annotations

import math

import numpy as np

METRIC_KEYS: tuple[str, ...] = (
    "acc2_nonzero", "f1_nonzero", "acc2_haszero", "f1_haszero", "mae", "corr",
    "acc7", "acc5", "mae_nonzero_subset", "corr_nonzero_subset",
)
COUNT_KEYS: tuple[str, ...] = ("n", "n_nonzero")


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, ties away from zero (unlike np.round's half-to-even)."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def weighted_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    """Support-weighted F1 of two boolean arrays (sklearn ``average='weighted'``, zero_division=0).

    Written out rather than calling sklearn so the bootstrap in cpsl.report.stats can reuse the same
    count formula; tests cross-check it against sklearn."""
    truth = np.asarray(truth, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    if truth.size == 0:
        return math.nan
    tp = float(np.sum(truth & pred))
    fp = float(np.sum(~truth & pred))
    fn = float(np.sum(truth & ~pred))
    tn = float(np.sum(~truth & ~pred))
    return f1_from_counts(tp, fp, fn, tn)


def f1_from_counts(tp, fp, fn, tn):
    """Weighted binary F1 from (possibly fractional / array) confusion counts, in [0, 1]."""
    tp, fp, fn, tn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn, tn))
    with np.errstate(invalid="ignore", divide="ignore"):
        f1_pos = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        f1_neg = np.where(2 * tn + fp + fn > 0, 2 * tn / (2 * tn + fp + fn), 0.0)
        total = tp + fp + fn + tn
        out = (f1_pos * (tp + fn) + f1_neg * (tn + fp)) / total
    out = np.where(total > 0, out, np.nan)
    return float(out) if out.ndim == 0 else out


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation in float64; NaN when undefined (n < 2 or a constant side)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size < 2:
        return math.nan
    dx = x - x.mean()
    dy = y - y.mean()
    sxx = float(dx @ dx)
    syy = float(dy @ dy)
    # A constant side has zero spread; a relative threshold avoids a spurious +/-1 from round-off.
    if sxx <= 1e-24 * max(1.0, float(x @ x)) or syy <= 1e-24 * max(1.0, float(y @ y)):
        return math.nan
    r = float(dx @ dy) / math.sqrt(sxx * syy)
    return max(-1.0, min(1.0, r))


def _accuracy(truth: np.ndarray, pred: np.ndarray) -> float:
    return math.nan if truth.size == 0 else 100.0 * float(np.mean(truth == pred))


def compute_metrics(prediction, label) -> dict:
    """All metrics of one split. ``prediction`` and ``label`` are 1-D arrays of the same length.

    Returns a flat dict: the keys of :data:`METRIC_KEYS` (float, NaN when undefined) and the
    counts ``n`` and ``n_nonzero`` (int)."""
    pred = np.asarray(prediction, dtype=np.float64).reshape(-1)
    lab = np.asarray(label, dtype=np.float64).reshape(-1)
    if pred.shape != lab.shape:
        raise ValueError(f"prediction has {pred.size} values but label has {lab.size}")
    if pred.size == 0:
        raise ValueError("cannot compute metrics of an empty split")
    bad = ~np.isfinite(pred)
    if bad.any():
        raise ValueError(f"prediction holds {int(bad.sum())} non-finite value(s), first at index {int(np.argmax(bad))}")
    bad = ~np.isfinite(lab)
    if bad.any():
        raise ValueError(f"label holds {int(bad.sum())} non-finite value(s), first at index {int(np.argmax(bad))}")

    nz = lab != 0
    out = {
        "acc2_nonzero": _accuracy(lab[nz] > 0, pred[nz] > 0),
        "f1_nonzero": 100.0 * weighted_f1(lab[nz] > 0, pred[nz] > 0),
        "acc2_haszero": _accuracy(lab >= 0, pred >= 0),
        "f1_haszero": 100.0 * weighted_f1(lab >= 0, pred >= 0),
        "mae": float(np.mean(np.abs(pred - lab))),
        "corr": pearson(pred, lab),
        "acc7": _accuracy(round_half_away(np.clip(lab, -3, 3)), round_half_away(np.clip(pred, -3, 3))),
        "acc5": _accuracy(round_half_away(np.clip(lab, -2, 2)), round_half_away(np.clip(pred, -2, 2))),
        "mae_nonzero_subset": float(np.mean(np.abs(pred[nz] - lab[nz]))) if nz.any() else math.nan,
        "corr_nonzero_subset": pearson(pred[nz], lab[nz]),
        "n": int(pred.size),
        "n_nonzero": int(nz.sum()),
    }
    return out


def json_safe(obj):
    """Replace NaN/inf floats by None (JSON null) recursively; json.dumps would write invalid 'NaN'."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
