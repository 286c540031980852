"""The embedded demo dataset: a small, deterministic, offline stand-in for CMU-MOSI in the exact CMU format.

Four computational sequences are written with :func:`cpsl.formats.csd.write_csd` (same HDF5 layout and
metadata fields as the CMU files), so every later stage runs on the demo exactly as on MOSI:

* words   ``(T, 1)`` bytes, contiguous tokens with ``sp`` silences between segments and some inside
  them; word durations 0.15-0.6 s;
* acoustic 100 Hz frames, 74-d (COVAREP-like), float32, with a few ``-inf`` values in dims 0 and 35 as
  real COVAREP has (log of zero energy);
* visual 30 Hz frames, 35-d (FACET-like), float32;
* labels one row per opinion segment: interval = segment start/end, feature ``(1,)`` in [-3, 3].

Planted sentiment (the choices below are ours; the paper has no demo). The demo must show what a
multimodal model adds, so the acoustic and visual streams carry information the text LACKS:

* each segment has a label ``y`` = mean of 5 simulated annotators' integer scores in [-3, 3]
  (so multiples of 0.2, exact zeros included, the full range covered), as MOSI labels are;
* text: a segment is "clear" or, with probability AMBIGUOUS_RATE (0.5), "ambiguous".
  Clear: each word is a sentiment word with probability 0.1 + 0.25 |y| / 3, positive with probability
  sigmoid(2 y), a strong word (``amazing`` vs ``nice``) with probability |y| / 3, the rest neutral filler.
  Ambiguous: the same number of sentiment words, but in pairs of one positive and one negative word of the
  strength |y| calls for ("good ... boring"): the text tells how strongly the speaker feels, not which way.
  Text alone therefore predicts the clear half well and the sign of the ambiguous half not at all;
* visual (strongest non-text): dims 2, 7, 11, 20 shifted by 0.45 y plus one segment-level nuisance N(0, 0.3):
  it disambiguates the ambiguous segments (the speaker's face says which way);
* acoustic (weaker): dims 1, 5, 9 shifted by 0.25 y plus one segment-level nuisance N(0, 0.6).
  Every other dim is noise; each dim then gets a fixed random offset/scale so raw scales differ as in
  real features. Frames outside segments carry no signal.

Folds are by video: 40/20/40 of a seeded shuffle (a test split of >= 100 segments at the default size, so
test metrics are stable enough to compare rows; training stays small enough for a CPU demo).
The same ``demo`` params give byte-identical arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from cpsl.data.sources import DEMO_FILE_NAMES
from cpsl.formats.csd import write_csd

ACOUSTIC_DIM = 74
VISUAL_DIM = 35
ACOUSTIC_HZ = 100.0
VISUAL_HZ = 30.0
ACOUSTIC_SIGNAL_DIMS = (1, 5, 9)
VISUAL_SIGNAL_DIMS = (2, 7, 11, 20)
ACOUSTIC_GAIN, ACOUSTIC_NUISANCE = 0.25, 0.6
VISUAL_GAIN, VISUAL_NUISANCE = 0.45, 0.3
AMBIGUOUS_RATE = 0.5
WORDS_PER_SEGMENT = (4, 12)  # inclusive range
FOLD_FRACTIONS = (0.4, 0.2, 0.4)  # train, valid, test (by video)
NEG_INF_DIMS = (0, 35)
NEG_INF_RATE = 0.01

ROOT_NAMES = {"words": "words", "acoustic": "COVAREP", "visual": "FACET", "labels": "Opinion Segment Labels"}

# Real English words the MiniLM/BERT tokenizer knows; some split into several subwords on purpose.
POSITIVE_STRONG = ["amazing", "excellent", "wonderful", "fantastic", "brilliant", "masterpiece", "hilarious",
                   "superb", "outstanding", "incredible", "unforgettable", "heartwarming", "captivating", "perfect",
                   "best", "love"]
POSITIVE_MILD = ["good", "nice", "fun", "enjoyed", "decent", "solid", "pleasant", "likeable", "funny", "enjoyable",
                 "lovely", "charming", "entertaining", "refreshing"]
NEGATIVE_STRONG = ["terrible", "awful", "horrible", "worst", "hate", "unbearable", "pointless", "cringeworthy",
                   "ridiculous", "stupid", "waste", "disappointing"]
NEGATIVE_MILD = ["bad", "boring", "dull", "weak", "mediocre", "predictable", "overrated", "forgettable", "tedious",
                 "bland", "lame", "poor", "clumsy", "annoying"]
NEUTRAL = ["the", "movie", "film", "i", "it", "was", "and", "a", "really", "just", "so", "to", "that", "this", "story",
           "actor", "actors", "scene", "plot", "character", "think", "know", "um", "uh", "you", "of", "in", "watched",
           "saw", "about", "with", "kind", "there", "is", "but", "director", "ending", "script", "basically",
           "honestly", "actually", "went", "see", "my", "friend", "theater", "yesterday", "whole", "part", "sort",
           "guess", "mean"]

_ID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


@dataclass(frozen=True)
class Signal:
    """How the label is planted: the share of segments whose text has no polarity, and per a/v stream the
    shift per label unit and the std of the segment-level nuisance on its signal dims."""

    ambiguous_rate: float = AMBIGUOUS_RATE
    acoustic_gain: float = ACOUSTIC_GAIN
    acoustic_nuisance: float = ACOUSTIC_NUISANCE
    visual_gain: float = VISUAL_GAIN
    visual_nuisance: float = VISUAL_NUISANCE


DEMO_SIGNAL = Signal()


@dataclass
class DemoData:
    """The generated streams, role -> {video_id: (intervals, features)}, plus folds and latent labels."""

    streams: dict = field(default_factory=dict)
    folds: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)  # video_id -> (n_segments,) float labels
    ambiguous: dict = field(default_factory=dict)  # video_id -> (n_segments,) bool: text without polarity


def _metadata(role: str, seed: int) -> dict:
    return {
        "computational sequence description": f"CPSL synthetic demo: {role} stream with a planted sentiment signal",
        "computational sequence version": "1.0",
        "alignment compatible": "True",
        "dataset name": "CPSL-DEMO",
        "dataset version": f"1.0-seed{seed}",
        "creator": "cpsl.data.demo",
        "contact": "see README.md",
        "featureset bib citation": "synthetic (no citation)",
        "dataset bib citation": "synthetic stand-in for CMU-MOSI (Zadeh et al., 2016)",
    }


def _segment_label(rng: np.random.Generator) -> float:
    # Mean of 5 annotators' integer scores, as MOSI labels; the base is spread over the whole scale.
    base = rng.uniform(-3.5, 3.5)
    scores = np.clip(np.rint(base + rng.normal(0.0, 0.8, size=5)), -3, 3)
    return float(np.round(scores.mean(), 1))


def _pick(rng: np.random.Generator, pool: list[str]) -> str:
    return pool[rng.integers(len(pool))]


def _segment_words(rng: np.random.Generator, y: float, n_words: int, ambiguous: bool) -> list[str]:
    p_sent = 0.1 + 0.25 * abs(y) / 3.0
    p_pos = 1.0 / (1.0 + np.exp(-2.0 * y))
    p_strong = abs(y) / 3.0
    words = []
    while len(words) < n_words:
        if rng.random() < p_sent:
            strong = rng.random() < p_strong
            pos_pool, neg_pool = (POSITIVE_STRONG, NEGATIVE_STRONG) if strong else (POSITIVE_MILD, NEGATIVE_MILD)
            if ambiguous:  # one word each way: intensity without polarity
                pair = [_pick(rng, pos_pool), _pick(rng, neg_pool)]
                words += pair if rng.random() < 0.5 else pair[::-1]
            else:
                words.append(_pick(rng, pos_pool if rng.random() < p_pos else neg_pool))
        else:
            words.append(_pick(rng, NEUTRAL))
    return words[:n_words] if not ambiguous else words


def _frames(rng, duration, hz, dim, seg_bounds, seg_shift, signal_dims, offsets, scales):
    """Frames of one video: noise, plus the per-segment shift on the signal dims inside segments."""
    n = int(np.ceil(duration * hz))
    starts = np.arange(n, dtype=np.float64) / hz
    intervals = np.stack([starts, starts + 1.0 / hz], axis=1)
    feats = rng.normal(0.0, 1.0, size=(n, dim))
    mid = starts + 0.5 / hz
    # segment index of each frame (-1 outside every segment)
    idx = np.searchsorted(seg_bounds[:, 0], mid, side="right") - 1
    inside = (idx >= 0) & (mid < seg_bounds[np.clip(idx, 0, None), 1])
    shift = np.where(inside, seg_shift[np.clip(idx, 0, None)], 0.0)
    feats[:, list(signal_dims)] += shift[:, None]
    feats = offsets + scales * feats
    return intervals, feats.astype(np.float32)


def generate_demo(demo: Mapping) -> DemoData:
    """Generate the demo streams in memory from the ``demo`` params section (seed, videos, min/max_segments)."""
    seed, n_videos = int(demo["seed"]), int(demo["videos"])
    lo, hi = int(demo["min_segments"]), int(demo["max_segments"])
    rng = np.random.default_rng(seed)
    scales = _feature_scales(rng, VISUAL_DIM)

    ids: list[str] = []
    while len(ids) < n_videos:
        vid = "".join(rng.choice(_ID_ALPHABET, size=11))
        if vid not in ids:
            ids.append(vid)

    out = DemoData(streams={role: {} for role in ROOT_NAMES})
    for vid in ids:
        _add_video(rng, out, vid, int(rng.integers(lo, hi + 1)), scales, DEMO_SIGNAL)

    order = [ids[i] for i in rng.permutation(n_videos)]
    n_train = max(1, round(FOLD_FRACTIONS[0] * n_videos))
    n_valid = max(1, round(FOLD_FRACTIONS[1] * n_videos))
    n_train = min(n_train, n_videos - 2)  # keep at least one video for valid and test
    out.folds = {
        "train": order[:n_train],
        "valid": order[n_train:n_train + n_valid],
        "test": order[n_train + n_valid:],
    }
    return out


def generate_layout(segments: Mapping[str, int], folds: Mapping[str, list], seed: int,
                    visual_dim: int = VISUAL_DIM, signal: Signal = DEMO_SIGNAL) -> DemoData:
    """Demo-style streams for a given layout: video id -> number of segments, and the folds of those ids
    (e.g. MOSI's real video ids, segment counts and standard folds, for a MOSI-size mirror in a study);
    ``signal`` says how much of the label the text and the a/v streams carry."""
    rng = np.random.default_rng(seed)
    scales = _feature_scales(rng, visual_dim)
    out = DemoData(streams={role: {} for role in ROOT_NAMES}, folds={k: list(v) for k, v in folds.items()})
    for vid, n_seg in segments.items():
        _add_video(rng, out, vid, int(n_seg), scales, signal)
    return out


def _feature_scales(rng: np.random.Generator, visual_dim: int) -> tuple:
    """Fixed per-dim offsets and scales (acoustic, then visual), so raw scales differ as in real features."""
    a_off, a_scale = rng.normal(0, 2, ACOUSTIC_DIM), rng.uniform(0.5, 3.0, ACOUSTIC_DIM)
    v_off, v_scale = rng.normal(0, 1, visual_dim), rng.uniform(0.5, 2.0, visual_dim)
    return a_off, a_scale, v_off, v_scale


def _add_video(rng: np.random.Generator, out: DemoData, vid: str, n_seg: int, scales: tuple,
               signal: Signal) -> None:
    """Draw one video of ``n_seg`` opinion segments (words, frames, labels) into ``out``."""
    a_off, a_scale, v_off, v_scale = scales
    t = float(rng.uniform(0.2, 1.0))
    tokens, tok_iv = ["sp"], [(0.0, t)]
    seg_bounds, ys, amb = [], [], []
    for s in range(n_seg):
        if s > 0:  # a pause between opinion segments
            gap = float(rng.uniform(0.2, 1.0))
            tokens.append("sp")
            tok_iv.append((t, t + gap))
            t += gap
        y = _segment_label(rng)
        ambiguous = bool(rng.random() < signal.ambiguous_rate)
        start = t
        words = _segment_words(rng, y, int(rng.integers(WORDS_PER_SEGMENT[0], WORDS_PER_SEGMENT[1] + 1)), ambiguous)
        for k, w in enumerate(words):
            if k > 0 and rng.random() < 0.15:  # a short hesitation inside the segment
                pause = float(rng.uniform(0.05, 0.4))
                tokens.append("sp")
                tok_iv.append((t, t + pause))
                t += pause
            dur = float(rng.uniform(0.15, 0.6))
            tokens.append(w)
            tok_iv.append((t, t + dur))
            t += dur
        seg_bounds.append((start, t))
        ys.append(y)
        amb.append(ambiguous)
    tokens.append("sp")
    tok_iv.append((t, t + 0.5))
    t += 0.5
    duration = t

    bounds = np.asarray(seg_bounds, dtype=np.float64)
    y_arr = np.asarray(ys, dtype=np.float64)
    a_shift = signal.acoustic_gain * y_arr + rng.normal(0.0, signal.acoustic_nuisance, n_seg)
    v_shift = signal.visual_gain * y_arr + rng.normal(0.0, signal.visual_nuisance, n_seg)
    a_iv, a_feat = _frames(rng, duration, ACOUSTIC_HZ, ACOUSTIC_DIM, bounds, a_shift, ACOUSTIC_SIGNAL_DIMS,
                           a_off, a_scale)
    ninf = rng.random((a_feat.shape[0], len(NEG_INF_DIMS))) < NEG_INF_RATE
    for j, d in enumerate(NEG_INF_DIMS):
        a_feat[ninf[:, j], d] = -np.inf
    v_iv, v_feat = _frames(rng, duration, VISUAL_HZ, len(v_off), bounds, v_shift, VISUAL_SIGNAL_DIMS,
                           v_off, v_scale)

    out.streams["words"][vid] = (np.asarray(tok_iv, dtype=np.float64), np.array(tokens, dtype="S")[:, None])
    out.streams["acoustic"][vid] = (a_iv, a_feat)
    out.streams["visual"][vid] = (v_iv, v_feat)
    out.streams["labels"][vid] = (bounds, y_arr.astype(np.float32)[:, None])
    out.labels[vid] = y_arr
    out.ambiguous[vid] = np.asarray(amb, dtype=bool)


def write_demo(out_dir: str | Path, demo: Mapping) -> tuple[dict, dict]:
    """Generate and write the four demo .csd files into ``out_dir`` (each atomically).

    Returns ``(paths, folds)``: role -> written path, and the train/valid/test video ids.
    """
    data = generate_demo(demo)
    return write_streams(data, out_dir, DEMO_FILE_NAMES, int(demo["seed"])), data.folds


def write_streams(data: DemoData, out_dir: str | Path, file_names: Mapping[str, str], seed: int) -> dict:
    """Write the four streams of ``data`` as CMU computational sequences named ``file_names[role]`` (each
    atomically); return role -> path."""
    out_dir = Path(out_dir)
    paths = {}
    for role, root in ROOT_NAMES.items():
        path = out_dir / file_names[role]
        write_csd(path, root, data.streams[role], _metadata(role, seed))
        paths[role] = path
    return paths
