"""Unit tests of the vectorised word alignment (the SDK comparison is in test_align_vs_mmsdk.py)."""
from __future__ import annotations

import numpy as np
import pytest

from cpsl.align.word_align import (
    EPSILON,
    _frame_means_masked,
    frame_means,
    intersecting_runs,
    reference_kept,
    replace_nonfinite,
    segment_members,
)


def _regular(n, step, dim, seed=0):
    starts = np.arange(n) * step
    return np.stack([starts, starts + step], 1), np.random.default_rng(seed).normal(size=(n, dim))


def test_hand_computed_means_respect_epsilon():
    frames = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]])
    feats = np.array([[1.0], [10.0], [100.0]])
    words = np.array([
        [0.9995, 2.0005],  # touches frames 0 and 2 by less than eps: only frame 1
        [0.5, 1.5],        # frames 0 and 1
        [0.998, 1.0],      # overlaps frame 0 by 0.002 > eps, frame 1 by nothing
        [5.0, 6.0],        # no frame
    ])
    means, counts = frame_means(frames, feats, words)
    np.testing.assert_allclose(means[:, 0], [10.0, 5.5, 1.0, 0.0])
    assert counts.tolist() == [1, 2, 1, 0]


def test_nonfinite_frames_give_numpy_mean_semantics_then_replacement_counts():
    frames, feats = _regular(6, 0.01, 3)
    feats[1, 0] = -np.inf
    feats[2, 1], feats[3, 1] = np.inf, -np.inf
    feats[4, 2] = np.nan
    words = np.array([[0.0, 0.02], [0.02, 0.04], [0.04, 0.06]])
    means, _ = frame_means(frames, feats, words)
    assert means[0, 0] == -np.inf and np.isfinite(means[0, 1:]).all()
    assert np.isnan(means[1, 1]) and np.isfinite(means[1, [0, 2]]).all()
    assert np.isnan(means[2, 2])
    # same as numpy's mean over the same frames
    np.testing.assert_allclose(means[0, 1:], feats[0:2, 1:].mean(axis=0))
    assert replace_nonfinite(means) == 3
    assert np.isfinite(means).all() and means[0, 0] == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_fast_path_equals_exact_mask_on_random_input(seed):
    rng = np.random.default_rng(seed)
    # frames on a grid with jittered ties at word edges, some zero-length frames, shuffled order
    frames, feats = _regular(400, 0.01, 4, seed)
    zero = rng.choice(400, 10, replace=False)
    frames[zero, 1] = frames[zero, 0]
    feats[rng.random(feats.shape) < 0.01] = -np.inf
    perm = rng.permutation(400)
    frames, feats = frames[perm], feats[perm]
    starts = (np.sort(rng.choice(np.arange(0, 400) * 0.01, 60, replace=False))
              + rng.choice([0, EPSILON, -EPSILON, 0.003], 60))
    words = np.stack([starts, starts + rng.choice([0.0, EPSILON, 0.05, 0.2], 60)], 1)
    assert intersecting_runs(frames, words) is not None
    fast, fast_n = frame_means(frames, feats, words)
    exact, exact_n = _frame_means_masked(frames, feats, words, EPSILON, np.zeros_like(fast))
    assert fast_n.tolist() == exact_n.tolist()
    np.testing.assert_allclose(fast, exact, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_overlapping_windows_take_the_exact_path():
    frames = np.array([[0.0, 0.5], [0.1, 0.2], [0.2, 0.3]])  # ends not monotone once sorted by start
    feats = np.array([[1.0], [2.0], [4.0]])
    assert intersecting_runs(frames, np.array([[0.0, 1.0]])) is None
    means, counts = frame_means(frames, feats, np.array([[0.15, 0.25], [0.4, 0.45]]))
    np.testing.assert_allclose(means[:, 0], [7 / 3, 1.0])
    assert counts.tolist() == [3, 1]


def test_reference_kept_skips_words_shorter_than_epsilon():
    words = np.array([[1.0, 1.0], [1.0, 1.0005], [1.0, 1.002]])
    assert reference_kept(words).tolist() == [False, False, True]


def test_segment_members_order_and_boundary_words():
    words = np.array([[0.5, 0.9], [0.0, 0.5], [0.9, 1.3], [1.3, 2.0]])  # stored out of time order
    segments = np.array([[0.0, 1.0], [1.0, 2.0], [3.0, 4.0], [1.0, 1.0]])
    members = segment_members(words, segments)
    assert [m.tolist() for m in members] == [[1, 0, 2], [2, 3], [], []]  # word 2 crosses t=1.0
