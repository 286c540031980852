"""A CMU-format mirror whose acoustic and visual streams have the statistics of real COVAREP and FACET features
(issue 22), for tests and studies of what the pipeline does with them.

The demo and the Gaussian mirrors (cpsl.data.demo) have no heavy tails, so a normalisation that only works on
well-behaved features passes on them. Real streams have, and this generator adds to the demo's streams (the
planted sentiment of cpsl.data.demo stays on its signal dims, so a model can still learn):

* heavy tails: each noise dim is multiplied per frame by a log-normal factor (a scale mixture);
* rare spikes: a frame/dim in ``SPIKE_RATE`` gets a value of 10^2-10^5 times its scale, either sign;
* near-constant dims (0 in most frames, a value now and then) and binary dims (COVAREP's voicing flag,
  FACET's action-unit evidence thresholded);
* values in the hundreds (COVAREP's F0 in Hz, 0 when unvoiced; FACET's face box in pixels);
* -inf (log of zero energy) and NaN frames (a lost face: the whole visual row), gaps in the acoustic frames
  (words without frames) and segments without any visual frame (no face found).

``write_real_feature_mirror`` writes the four files under a dataset's SDK names (the ``mosi`` path reads them from
``data.mirror``). Deterministic in its seed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from cpsl.data.demo import (
    ACOUSTIC_DIM,
    ACOUSTIC_SIGNAL_DIMS,
    VISUAL_SIGNAL_DIMS,
    DemoData,
    Signal,
    generate_layout,
    write_streams,
)

SPIKE_RATE = 3e-4           # share of frame/dim values that are spikes
SPIKE_DECADES = (2.0, 5.0)  # a spike is 10^U(2, 5) times the dim's scale
NAN_ROW_RATE = 0.005        # visual frames with every value NaN (face lost for one frame)
NEG_INF_RATE = 0.01         # COVAREP -inf values in the log-energy dims
ACOUSTIC_GAP_RATE = 0.02    # share of acoustic frames that start a 0.3 s gap (words without frames)
FACELESS_SEGMENT_RATE = 0.1  # segments with no visual frame at all


def _kinds(dim: int, signal_dims: tuple[int, ...], hundreds: tuple[int, ...], binary: tuple[int, ...],
           near_constant: tuple[int, ...]) -> dict[str, list[int]]:
    """Which dims get which treatment; every dim not named (and not a signal dim) is heavy-tailed noise."""
    named = set(signal_dims) | set(hundreds) | set(binary) | set(near_constant)
    return {"hundreds": list(hundreds), "binary": list(binary), "near_constant": list(near_constant),
            "heavy": [d for d in range(dim) if d not in named], "signal": list(signal_dims)}


ACOUSTIC_KINDS = _kinds(ACOUSTIC_DIM, ACOUSTIC_SIGNAL_DIMS, hundreds=(0,), binary=(3,),
                        near_constant=tuple(range(60, 74)))
NEG_INF_DIMS = (35, 36)


def visual_kinds(dim: int) -> dict[str, list[int]]:
    # FACET: the last 4 dims a face box in pixels, 6 binary action-unit dims, 4 near-constant ones
    return _kinds(dim, VISUAL_SIGNAL_DIMS, hundreds=tuple(range(dim - 4, dim)),
                  binary=tuple(range(dim - 14, dim - 8)), near_constant=tuple(range(dim - 8, dim - 4)))


def _real(rng: np.random.Generator, x: np.ndarray, kinds: Mapping[str, list[int]]) -> np.ndarray:
    """One video's frames (n, d) given real-feature statistics (float64 in, float64 out)."""
    x = x.astype(np.float64).copy()
    n = x.shape[0]
    heavy = kinds["heavy"]
    x[:, heavy] *= np.exp(rng.normal(0.0, 1.5, size=(n, len(heavy))))  # log-normal scale mixture: heavy tails
    if kinds["hundreds"]:
        h = kinds["hundreds"]
        x[:, h] = 200.0 + 60.0 * x[:, h]
    for d in kinds["binary"]:
        x[:, d] = (x[:, d] > np.median(x[:, d])).astype(np.float64)
    for d in kinds["near_constant"]:
        x[:, d] = np.where(rng.random(n) < 0.01, x[:, d], 0.0)
    scale = np.maximum(np.abs(x).mean(axis=0), 1e-3) if n else np.ones(x.shape[1])
    spikes = rng.random(x.shape) < SPIKE_RATE
    magnitude = 10.0 ** rng.uniform(*SPIKE_DECADES, size=x.shape) * rng.choice([-1.0, 1.0], size=x.shape)
    return np.where(spikes, magnitude * scale, x)


def _acoustic(rng: np.random.Generator, iv: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = _real(rng, x, ACOUSTIC_KINDS)
    voiced = x[:, 3] > 0  # F0 (dim 0) is 0 when unvoiced, as in COVAREP
    x[~voiced, 0] = 0.0
    for d in NEG_INF_DIMS:
        x[rng.random(len(x)) < NEG_INF_RATE, d] = -np.inf
    keep = np.ones(len(x), dtype=bool)
    for start in np.flatnonzero(rng.random(len(x)) < ACOUSTIC_GAP_RATE):
        keep[start:start + 30] = False  # 0.3 s at 100 Hz without frames
    return iv[keep], x[keep].astype(np.float32)


def _visual(rng: np.random.Generator, iv: np.ndarray, x: np.ndarray, segments: np.ndarray,
            kinds: Mapping[str, list[int]]) -> tuple[np.ndarray, np.ndarray]:
    x = _real(rng, x, kinds)
    x[rng.random(len(x)) < NAN_ROW_RATE] = np.nan
    mid = iv.mean(axis=1)
    keep = np.ones(len(x), dtype=bool)
    for start, end in segments[rng.random(len(segments)) < FACELESS_SEGMENT_RATE]:
        keep &= ~((mid >= start) & (mid < end))
    return iv[keep], x[keep].astype(np.float32)


def add_real_statistics(data: DemoData, seed: int) -> DemoData:
    """Give the acoustic and visual streams of ``data`` (in place) the statistics listed in the module docstring."""
    rng = np.random.default_rng(seed)
    for vid in list(data.streams["acoustic"]):
        data.streams["acoustic"][vid] = _acoustic(rng, *data.streams["acoustic"][vid])
        iv, x = data.streams["visual"][vid]
        data.streams["visual"][vid] = _visual(rng, iv, x, data.streams["labels"][vid][0], visual_kinds(x.shape[1]))
    return data


def write_real_feature_mirror(folder: str | Path, segments: Mapping[str, int], folds: Mapping[str, list],
                              file_names: Mapping[str, str], seed: int, visual_dim: int = 47,
                              signal: Signal | None = None) -> Path:
    """Write a mirror of ``segments`` (video id -> number of segments) in ``folds`` with real-feature statistics
    into ``folder`` under ``file_names`` (role -> SDK file name); return the folder."""
    data = generate_layout(segments, folds, seed, visual_dim=visual_dim, **({"signal": signal} if signal else {}))
    add_real_statistics(data, seed + 1)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_streams(data, folder, file_names, seed)
    return folder
