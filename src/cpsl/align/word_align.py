"""Word-level alignment with the semantics of mmsdk's ``mmdataset.align(reference='words',
collapse_functions=[avg])`` (avg = ``numpy.average(features, axis=0)``), vectorised.

The SDK's rule (``__intersect_and_copy``, ``epsilon = 10e-4``), for a reference interval ``[rs, re]``
(a word, later a labelled segment) and a frame ``[fs, fe]``:

* references with ``|re - rs| < eps`` are skipped (no entry at all);
* a frame intersects when ``re - fs > -eps`` and ``fe - rs > -eps`` and its clipped interval
  ``[max(fs, rs), min(fe, re)]`` is longer than ``eps`` (``abs(...) > eps``);
* the word's vector is the mean of the intersecting frames, so a -inf frame gives -inf, a nan frame or
  +inf with -inf give nan; a word with no intersecting frame gets no entry (imputed later as zeros).

For frames with positive length, ``fl(min(fe, re) - max(fs, rs)) > eps`` is the conjunction of
``fl(fe - rs) > eps``, ``fl(re - fs) > eps``, ``fl(fe - fs) > eps`` and ``fl(re - rs) > eps``, because
float subtraction is monotone in both arguments. So once frames shorter than eps are dropped (they can
never intersect) and frames are sorted by start with non-decreasing ends (true of COVAREP/FACET frames
and of words), the frames of each reference form one contiguous run ``[lo, hi)``: found with
``np.searchsorted`` and then corrected a step at a time with the exact float test, so the result equals
the SDK's even at boundary ties. Sums over runs use ``np.add.reduceat`` (no cancellation, unlike a
cumulative-sum difference) and propagate -inf/+inf/nan exactly as the SDK's mean does. Frames that break the
ordering (overlapping windows with shrinking ends, inverted intervals) fall back to an exact brute-force mask.
"""
from __future__ import annotations

import numpy as np

EPSILON = 10e-4  # mmsdk.mmdatasdk.dataset.dataset.epsilon
_CHUNK = 256  # references per block in the brute-force fallback (bounds its memory)


def reference_kept(intervals: np.ndarray, eps: float = EPSILON) -> np.ndarray:
    """The SDK skips references (words, segments) shorter than eps: ``abs(start - end) < eps``."""
    return ~(np.abs(intervals[:, 0] - intervals[:, 1]) < eps)


def _exact_mask(fs, fe, rs, re, eps):
    """The SDK's test, literally, for a block of references (rows) x all frames (columns)."""
    rs, re = rs[:, None], re[:, None]
    pre = ((re - fs[None, :]) > -eps) & ((fe[None, :] - rs) > -eps)
    clipped = np.abs(np.maximum(fs[None, :], rs) - np.minimum(fe[None, :], re))
    return pre & (clipped > eps)


def _runs(fs, fe, rs, re, eps):
    """Per reference, the run [lo, hi) of frames (sorted by start, ends non-decreasing, all longer
    than eps) that intersect it. Exact: searchsorted guesses, the float test corrects."""
    n = len(fs)
    if n == 0:  # a video with no frames (or none longer than eps): every run is empty
        return np.zeros(len(rs), dtype=np.int64), np.zeros(len(rs), dtype=np.int64)
    # lo = first frame with fl(fe - rs) > eps (a suffix of the sorted ends)
    lo = np.searchsorted(fe, rs + eps, side="right")
    while True:
        step = (lo > 0) & ((fe[np.maximum(lo - 1, 0)] - rs) > eps)
        if not step.any():
            break
        lo[step] -= 1
    while True:
        step = (lo < n) & ~((fe[np.minimum(lo, n - 1)] - rs) > eps)
        if not step.any():
            break
        lo[step] += 1
    # hi = number of frames with fl(re - fs) > eps (a prefix of the sorted starts)
    hi = np.searchsorted(fs, re - eps, side="left")
    while True:
        step = (hi < n) & ((re - fs[np.minimum(hi, n - 1)]) > eps)
        if not step.any():
            break
        hi[step] += 1
    while True:
        step = (hi > 0) & ~((re - fs[np.maximum(hi - 1, 0)]) > eps)
        if not step.any():
            break
        hi[step] -= 1
    empty = (hi <= lo) | ~((re - rs) > eps)
    hi = np.where(empty, lo, hi)
    return lo, hi


def _ordered_frames(intervals: np.ndarray, eps: float):
    """Sort frames by start (stable, as the SDK does), drop those too short to ever intersect.
    Returns (order, fs, fe) or None when the frames are not run-shaped (fallback needed)."""
    fs, fe = intervals[:, 0], intervals[:, 1]
    if np.any(fe < fs):
        return None
    order = None if np.all(fs[1:] >= fs[:-1]) else np.argsort(fs, kind="stable")
    if order is not None:
        fs, fe = fs[order], fe[order]
    long_enough = (fe - fs) > eps
    if not long_enough.all():
        keep = np.flatnonzero(long_enough)
        order = keep if order is None else order[keep]
        fs, fe = fs[keep], fe[keep]
    if np.any(fe[1:] < fe[:-1]):
        return None
    return order, fs, fe


def intersecting_runs(frame_intervals: np.ndarray, ref_intervals: np.ndarray, eps: float = EPSILON):
    """Index sets of intersecting frames per reference.

    Returns ``(order, lo, hi)`` where reference j intersects frames ``order[lo[j]:hi[j]]`` (``order``
    None = identity), or None when the frames are not sorted-run shaped (use :func:`intersecting_masks`).
    """
    prepared = _ordered_frames(np.asarray(frame_intervals, dtype=np.float64), eps)
    if prepared is None:
        return None
    order, fs, fe = prepared
    ref = np.asarray(ref_intervals, dtype=np.float64)
    lo, hi = _runs(fs, fe, ref[:, 0].copy(), ref[:, 1].copy(), eps)
    return order, lo, hi


def intersecting_masks(frame_intervals: np.ndarray, ref_intervals: np.ndarray, eps: float = EPSILON):
    """Yield ``(ref_slice, mask (refs x frames))`` blocks with the SDK's exact test (any frame order)."""
    fi = np.asarray(frame_intervals, dtype=np.float64)
    ri = np.asarray(ref_intervals, dtype=np.float64)
    for start in range(0, len(ri), _CHUNK):
        block = slice(start, min(start + _CHUNK, len(ri)))
        mask = _exact_mask(fi[:, 0], fi[:, 1], ri[block, 0], ri[block, 1], eps)
        mask &= ((ri[block, 1] - ri[block, 0]) > eps)[:, None]
        yield block, mask


def _run_sums(feats: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Row sums over non-empty runs [lo, hi) in float64, via one ``np.add.reduceat`` over interleaved
    bounds (the odd slices between runs are discarded). Sums propagate inf/nan like numpy's mean:
    -inf if a -inf frame is in the run, nan if nan or both infinities are."""
    n = len(feats)
    at_end = hi == n  # reduceat indices must be < n: sum [lo, n-1) and add the last row separately
    hi_c = np.where(at_end, n - 1, hi)
    bounds = np.stack([lo, hi_c], axis=1).ravel()
    with np.errstate(invalid="ignore", over="ignore"):  # inf + -inf -> nan is the intended result
        sums = np.add.reduceat(feats, bounds, axis=0, dtype=np.float64)[::2]
    only_last = at_end & (lo == n - 1)  # empty [n-1, n-1): reduceat returned row n-1 itself
    sums[only_last] = feats[n - 1]
    sums[at_end & ~only_last] += feats[n - 1]
    return sums


def frame_means(frame_intervals: np.ndarray, features: np.ndarray, ref_intervals: np.ndarray,
                eps: float = EPSILON) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the frames intersecting each reference interval, as the SDK's avg collapse gives it.

    Returns ``(means (R, d) float64, counts (R,) int)``; rows with count 0 are 0 (the SDK has no entry
    there; its ``impute`` default fills zeros). Non-finite results are kept (-inf/+inf/nan) for the
    caller to count and replace.
    """
    feats = np.asarray(features)
    if feats.ndim == 1:
        feats = feats[:, None]
    n_ref, dim = len(ref_intervals), feats.shape[1]
    means = np.zeros((n_ref, dim), dtype=np.float64)
    runs = intersecting_runs(frame_intervals, ref_intervals, eps)
    if runs is None:
        return _frame_means_masked(frame_intervals, feats, ref_intervals, eps, means)
    order, lo, hi = runs
    if order is not None:
        feats = feats[order]
    counts = hi - lo
    hit = counts > 0
    if hit.any():
        means[hit] = _run_sums(feats, lo[hit], hi[hit]) / counts[hit, None]
    return means, counts


def _frame_means_masked(frame_intervals, feats, ref_intervals, eps, means):
    """Fallback for frames in any order: exact masks, matrix products on the finite part, and
    per-column counts of nan/+inf/-inf to rebuild the non-finite results numpy's mean would give."""
    finite = np.isfinite(feats)
    bad_cols = np.flatnonzero(~finite.all(axis=0))
    clean = np.where(finite, feats, 0.0).astype(np.float64, copy=False)
    bad = feats[:, bad_cols]
    counts = np.zeros(len(ref_intervals), dtype=np.int64)
    for block, mask in intersecting_masks(frame_intervals, ref_intervals, eps):
        m = mask.astype(np.float64)
        counts[block] = mask.sum(axis=1)
        sums = m @ clean
        if len(bad_cols):
            nan_n, pos_n, neg_n = (m @ test(bad) for test in (np.isnan, np.isposinf, np.isneginf))
            part = sums[:, bad_cols]
            part[neg_n > 0] = -np.inf
            part[pos_n > 0] = np.inf
            part[(nan_n > 0) | ((pos_n > 0) & (neg_n > 0))] = np.nan
            sums[:, bad_cols] = part
        means[block] = sums
    hit = counts > 0
    means[hit] /= counts[hit, None]
    return means, counts


def segment_members(word_intervals: np.ndarray, segment_intervals: np.ndarray,
                    eps: float = EPSILON) -> list[np.ndarray]:
    """Word indices of each segment, in the SDK's order (by word start, ties by word index).

    The second SDK alignment (to the label intervals) applies the same intersection rule with the
    words as frames; segments shorter than eps get no words.
    """
    runs = intersecting_runs(word_intervals, segment_intervals, eps)
    if runs is not None:
        order, lo, hi = runs
        idx = np.arange(len(word_intervals)) if order is None else order
        return [idx[a:b] for a, b in zip(lo, hi)]
    starts = np.asarray(word_intervals, dtype=np.float64)[:, 0]
    out: list[np.ndarray] = []
    for _, mask in intersecting_masks(word_intervals, segment_intervals, eps):
        for row in mask:
            members = np.flatnonzero(row)
            out.append(members[np.argsort(starts[members], kind="stable")])
    return out


def replace_nonfinite(values: np.ndarray) -> int:
    """Replace nan/+inf/-inf by 0 in place; return how many values were replaced."""
    bad = ~np.isfinite(values)
    count = int(bad.sum())
    if count:
        values[bad] = 0.0
    return count
