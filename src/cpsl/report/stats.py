"""Statistics over seeds and over test segments.

* :func:`describe`: mean, sample std (ddof=1) and a 95% confidence interval of the mean with the
  t distribution over seeds (``mean +/- t_{0.975, n-1} * std / sqrt(n)``). With one seed std and the
  interval are undefined (null) and the output says so.
* :func:`paired_t_test`: ``scipy.stats.ttest_rel`` of the reference (full model) against another
  configuration over the seeds both were run with. Needs >= 2 shared seeds.
* :func:`paired_bootstrap`: a paired bootstrap over TEST SEGMENTS. One resample draws N segments with
  replacement (fixed generator seed); on it we compute, for each shared seed s, metric(reference_s) -
  metric(other_s) and average over seeds. So the statistic is the seed-averaged metric difference, the
  same quantity as the difference of the table means, and both kinds of randomness are respected: the
  seeds are kept paired, the segments are resampled. (Averaging the predictions over seeds first would
  test an ensemble, which is not what the tables report.) The interval is the percentile interval; the
  two-sided p-value is ``min(1, 2 * min(P(d* <= 0), P(d* >= 0)))`` with the +1 correction of
  Davison & Hinkley, the usual "bootstrap p-value from the interval's side of zero".

Every metric used here is a function of weighted sums over segments, so a resample is just a vector
of counts ``w`` (how often each segment was drawn) and all resamples are a matrix product. The
weighted formulas below reproduce :mod:`cpsl.metrics.scores` exactly when ``w`` is all ones (tested).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from scipy import stats as sps

from cpsl.metrics.scores import f1_from_counts
from cpsl.report.metrics_schema import METRIC_BOUNDS  # noqa: F401 - the report's t intervals are clipped to it

BOOTSTRAP_METRICS: tuple[str, ...] = ("acc2_nonzero", "f1_nonzero", "acc2_haszero", "f1_haszero", "mae", "corr")


def _finite(values: Sequence[float | None]) -> np.ndarray:
    arr = np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def describe(per_seed: Mapping[int, float | None], confidence: float = 0.95,
             bounds: tuple[float, float] | None = None) -> dict:
    """Summary of one metric over seeds. Seeds whose value is null/NaN are listed but not averaged.
    ``bounds`` (the metric's range) clips the t interval and says so in ``ci_note``."""
    vals = _finite(list(per_seed.values()))
    n = int(vals.size)
    out = {
        "mean": float(vals.mean()) if n else None,
        "std": float(vals.std(ddof=1)) if n >= 2 else None,
        "ci95": None,
        "n": n,
        "per_seed": {str(k): (None if v is None or not math.isfinite(float(v)) else float(v))
                     for k, v in per_seed.items()},
    }
    if n >= 2:
        half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * out["std"] / math.sqrt(n)
        out["ci95"] = [out["mean"] - half, out["mean"] + half]
        if bounds is not None and (out["ci95"][0] < bounds[0] or out["ci95"][1] > bounds[1]):
            out["ci95"] = [max(out["ci95"][0], bounds[0]), min(out["ci95"][1], bounds[1])]
            out["ci_note"] = f"t interval clipped to the metric's range [{bounds[0]}, {bounds[1]}]"
    else:
        out["ci_note"] = f"{n} finite seed value(s): std and the t interval need at least 2 seeds"
    if n < len(per_seed):
        out["note"] = f"{len(per_seed) - n} seed value(s) undefined (null) and left out of mean/std"
    return out


def paired_t_test(reference: Mapping[int, float | None], other: Mapping[int, float | None]) -> dict:
    """Paired t-test (scipy.stats.ttest_rel) of reference - other over the seeds both define."""
    seeds = sorted(s for s in set(reference) & set(other)
                   if reference[s] is not None and other[s] is not None
                   and math.isfinite(reference[s]) and math.isfinite(other[s]))
    out: dict = {"test": "paired t-test over seeds (scipy.stats.ttest_rel), reference - other",
                 "seeds": seeds, "mean_diff": None, "t": None, "df": None, "p": None}
    if not seeds:
        out["note"] = "no shared seed with a defined value"
        return out
    a = np.array([reference[s] for s in seeds], dtype=np.float64)
    b = np.array([other[s] for s in seeds], dtype=np.float64)
    out["mean_diff"] = float(np.mean(a - b))
    if len(seeds) < 2:
        out["note"] = "one shared seed: a t-test needs at least 2"
        return out
    d = a - b
    if np.allclose(d, d[0], rtol=0, atol=1e-12):
        # ttest_rel divides by the std of the differences; with identical differences it is undefined.
        out["note"] = "the differences are identical on every seed (zero variance): t and p undefined"
        return out
    res = sps.ttest_rel(a, b)
    out.update(t=float(res.statistic), df=len(seeds) - 1, p=float(res.pvalue))
    return out


# ---------------------------------------------------------------- weighted metrics (bootstrap) ----
def _segment_columns(label: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-segment quantities whose weighted sums give every bootstrap metric; shape (N, 14)."""
    nz = (label != 0).astype(np.float64)
    t_nz, p_nz = label > 0, pred > 0
    t_hz, p_hz = label >= 0, pred >= 0
    cols = [
        np.ones_like(label), nz,
        nz * (t_nz == p_nz), nz * (t_nz & p_nz), nz * (~t_nz & p_nz), nz * (t_nz & ~p_nz), nz * (~t_nz & ~p_nz),
        (t_hz == p_hz), (t_hz & p_hz), (~t_hz & p_hz), (t_hz & ~p_hz), (~t_hz & ~p_hz),
        np.abs(pred - label), pred,
    ]
    return np.stack([np.asarray(c, dtype=np.float64) for c in cols], axis=1)


def _metrics_from_sums(s: np.ndarray, sy: np.ndarray, syy: np.ndarray, spp: np.ndarray, spy: np.ndarray) -> dict:
    """Metrics from weighted sums; ``s`` has the 14 columns of :func:`_segment_columns` in the last axis."""
    n, n_nz = s[..., 0], s[..., 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            "acc2_nonzero": np.where(n_nz > 0, 100 * s[..., 2] / n_nz, np.nan),
            "f1_nonzero": 100 * np.asarray(f1_from_counts(s[..., 3], s[..., 4], s[..., 5], s[..., 6])),
            "acc2_haszero": 100 * s[..., 7] / n,
            "f1_haszero": 100 * np.asarray(f1_from_counts(s[..., 8], s[..., 9], s[..., 10], s[..., 11])),
            "mae": s[..., 12] / n,
        }
        sp = s[..., 13]
        cov = spy - sp * sy / n
        vp = spp - sp * sp / n
        vy = syy - sy * sy / n
        tiny = 1e-12 * np.maximum(1.0, spp)
        ok = (vp > tiny) & (vy > 1e-12 * np.maximum(1.0, syy)) & (n >= 2)
        out["corr"] = np.where(ok, cov / np.sqrt(np.where(ok, vp * vy, 1.0)), np.nan)
    return out


class _Weighted:
    """Weighted metrics of one (labels, predictions) pair for many weight vectors at once."""

    def __init__(self, label: np.ndarray, pred: np.ndarray):
        self.cols = _segment_columns(label, pred)
        self.extra = np.stack([label, label * label, pred * pred, pred * label], axis=1)

    def sums(self, w: np.ndarray, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The weighted sums of segments ``start .. start + w.shape[-1]`` (a block of the segments)."""
        stop = start + w.shape[-1]
        return w @ self.cols[start:stop], w @ self.extra[start:stop]

    @staticmethod
    def metrics_of(s: np.ndarray, e: np.ndarray) -> dict:
        return _metrics_from_sums(s, e[..., 0], e[..., 1], e[..., 2], e[..., 3])

    def metrics(self, w: np.ndarray) -> dict:
        return self.metrics_of(*self.sums(w))


def weighted_metrics(label, pred, weights) -> dict:
    """Metrics of :data:`BOOTSTRAP_METRICS` with per-segment integer/real weights (1-D or (B, N))."""
    weighted = _Weighted(np.asarray(label, np.float64), np.asarray(pred, np.float64))
    return weighted.metrics(np.asarray(weights, np.float64))


# Elements (resamples x segments) of one block of bootstrap counts: bounds the memory of a resampling step
# whatever the number of test segments (the counts, the drawn indices and their offsets: ~40 MB).
BLOCK_ELEMENTS = 1 << 20


def _count_blocks(rng: np.random.Generator, n: int, b: int, block: int):
    """Yield (start, counts) for ``b`` resamples of ``n`` segments drawn with replacement, ``block`` segments at a
    time: ``counts`` (b, k) says how often each segment of ``start .. start + k`` was drawn. Exactly a multinomial
    draw: the draws falling in a block are binomial given those left (conditional binomials), and uniform over
    the block's segments; so no array spans all n segments of all b resamples."""
    left = np.full(b, n, dtype=np.int64)  # draws not yet placed, per resample
    for start in range(0, n, block):
        k = min(block, n - start)
        here = left if start + k == n else rng.binomial(left, k / (n - start))
        left = left - here
        idx = rng.integers(0, k, size=int(here.sum())) + np.repeat(np.arange(b, dtype=np.int64) * k, here)
        yield start, np.bincount(idx, minlength=b * k).reshape(b, k).astype(np.float64)


def paired_bootstrap(label, reference: Mapping[int, np.ndarray], other: Mapping[int, np.ndarray],
                     n_resamples: int = 5000, seed: int = 0, metrics: Sequence[str] = BOOTSTRAP_METRICS,
                     chunk: int = 500, block_elements: int = BLOCK_ELEMENTS) -> dict:
    """Paired bootstrap over segments of the seed-averaged difference metric(reference) - metric(other).

    ``label`` (N,) is shared; ``reference`` and ``other`` map seed -> predictions (N,) aligned with it.
    Only seeds present in both are used. ``chunk`` resamples are drawn together, their counts in blocks of
    segments (``block_elements`` counts at a time): memory beyond the inputs' O(N) is bounded."""
    label = np.asarray(label, dtype=np.float64)
    seeds = sorted(set(reference) & set(other))
    if not seeds:
        raise ValueError("paired bootstrap: the two configurations share no seed")
    n = label.size
    pairs = [(_Weighted(label, np.asarray(reference[s], np.float64)),
              _Weighted(label, np.asarray(other[s], np.float64))) for s in seeds]

    def seed_mean_diff(sums: list) -> dict:
        acc = {m: 0.0 for m in metrics}
        for (ref_s, ref_e, oth_s, oth_e) in sums:
            mr, mo = _Weighted.metrics_of(ref_s, ref_e), _Weighted.metrics_of(oth_s, oth_e)
            for m in metrics:
                acc[m] = acc[m] + (mr[m] - mo[m])
        return {m: acc[m] / len(seeds) for m in metrics}

    observed = seed_mean_diff([(*r.sums(np.ones(n)), *o.sums(np.ones(n))) for r, o in pairs])
    rng = np.random.default_rng(seed)
    draws = {m: [] for m in metrics}
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        sums = [[0.0, 0.0, 0.0, 0.0] for _ in pairs]  # per seed: the weighted sums over all blocks
        for start, w in _count_blocks(rng, n, b, max(1, block_elements // b)):
            for acc, (r, o) in zip(sums, pairs):
                for i, part in enumerate((*r.sums(w, start), *o.sums(w, start))):
                    acc[i] = acc[i] + part
        d = seed_mean_diff(sums)
        for m in metrics:
            draws[m].append(np.asarray(d[m]))
        done += b
    out = {}
    for m in metrics:
        dist = np.concatenate(draws[m])
        dist = dist[np.isfinite(dist)]
        obs = float(observed[m])
        if not math.isfinite(obs) or dist.size == 0:
            out[m] = {"diff": None, "ci95": None, "p": None, "n_valid_resamples": int(dist.size)}
            continue
        lo, hi = np.percentile(dist, [2.5, 97.5])
        k = dist.size
        p_le = (1 + np.sum(dist <= 0)) / (k + 1)
        p_ge = (1 + np.sum(dist >= 0)) / (k + 1)
        out[m] = {"diff": obs, "ci95": [float(lo), float(hi)], "p": float(min(1.0, 2 * min(p_le, p_ge))),
                  "n_valid_resamples": int(k)}
    return {"test": "paired bootstrap over test segments of the seed-averaged difference, reference - other "
                    "(percentile 95% interval, two-sided p)",
            "seeds": seeds, "n_segments": int(n), "n_resamples": int(n_resamples), "rng_seed": int(seed),
            "metrics": out}
