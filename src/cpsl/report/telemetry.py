"""The modulation telemetry of a row held against what the paper reports (Section 3.5 / Figure 3).

For c_a, c_v and the imbalance degree (history.csv epoch means, averaged over the row's seeds as Figure 3
draws them): the per-epoch values, whether each lies in the paper's range
(:data:`cpsl.report.paper_results.FIGURE3_RANGES`, inclusive), and the fraction of the epochs inside the
modulation window (``gm.start_epoch``-``gm.end_epoch``, the epochs the paper's description covers) that do,
for the seed mean and for each seed. A run that behaves as the paper describes scores near 1; a run whose a/v
path does not learn keeps c_a = c_v (both modalities equally bad) and scores 0 on at least one of them.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from cpsl.report.figures import mean_over_seeds
from cpsl.report.paper_results import FIGURE3_RANGES, FIGURE3_SOURCE


def in_range(values: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """True where a finite value lies in [lo, hi] (float round-off at the edges counts as inside)."""
    lo, hi = bounds
    return np.isfinite(values) & (values >= lo - 1e-12) & (values <= hi + 1e-12)


def _fraction(epochs: np.ndarray, values: np.ndarray, bounds, window) -> float | None:
    inside = (epochs >= window[0]) & (epochs <= window[1]) & np.isfinite(values)
    return float(in_range(values[inside], bounds).mean()) if inside.any() else None


def against_paper(histories: Sequence[Mapping[str, np.ndarray]], seeds: Sequence[int],
                  window: tuple[int, int]) -> dict:
    """{"source", "window", "epochs", column: {paper_range, per_epoch, in_range, fraction_in_range_in_window,
    per_seed_fraction_in_range_in_window}} for each column of FIGURE3_RANGES the runs recorded."""
    out: dict = {"source": FIGURE3_SOURCE, "window": list(window)}
    if not histories:
        return out
    epochs, means, _ = mean_over_seeds(histories)
    out["epochs"] = [int(e) for e in epochs]
    for column, bounds in FIGURE3_RANGES.items():
        if column not in means or not np.isfinite(means[column]).any():
            continue
        y = means[column]
        out[column] = {
            "paper_range": list(bounds),
            "per_epoch": [None if not math.isfinite(v) else float(v) for v in y],
            "in_range": [bool(b) for b in in_range(y, bounds)],
            "fraction_in_range_in_window": _fraction(epochs, y, bounds, window),
            "per_seed_fraction_in_range_in_window": {
                str(seed): _fraction(h["epoch"], h[column], bounds, window)
                for seed, h in zip(seeds, histories) if column in h},
        }
    return out
