"""Modality-reliance check: how much do the test metrics change when one stream is shuffled?

For modality m (acoustic, then visual) the test segments keep their text and their other stream, but get the
m-features of ANOTHER segment (a seeded permutation of the segments; R draws, ``eval.reliance_permutations``).
A model that uses m loses accuracy; a model that ignores m (the failure that "multimodal" MSA models hide
behind text-only performance) does not move at all. The deltas are permuted minus intact, averaged over the
R draws, per metric: a positive delta MAE / negative delta Corr means the model relies on m. Each draw's delta
is kept too (``draws``), so a reader can tell a reliance from the permutation noise (cpsl.metrics.av_learnt).

Segments differ in length, so the donor's word-position features are resampled onto the recipient's word
positions by nearest index (the donor's temporal order is kept); [CLS]/[SEP]/padding stay zero.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

MODALITY_KEYS = {"acoustic": "acoustic", "visual": "visual"}
DELTA_METRICS = ("mae", "corr", "acc2_nonzero", "acc2_haszero")
PERMUTATION_SEED = 20261127


def word_positions_np(attention_mask: np.ndarray) -> np.ndarray:
    """numpy twin of cpsl.nn.tokens.word_positions: valid tokens minus [CLS] and the last valid ([SEP])."""
    mask = np.asarray(attention_mask).astype(bool)
    pos = np.arange(mask.shape[1])[None, :]
    last = mask.sum(1, keepdims=True) - 1
    return mask & (pos > 0) & (pos < last)


def permute_modality(features: np.ndarray, attention_mask: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Segment i receives segment perm[i]'s features, resampled onto i's word positions (see module doc)."""
    words = word_positions_np(attention_mask)
    out = np.zeros_like(features)
    for i, j in enumerate(perm):
        dst, src = np.flatnonzero(words[i]), np.flatnonzero(words[j])
        if dst.size == 0 or src.size == 0:
            continue
        pick = src[(np.arange(dst.size) * src.size) // dst.size]
        out[i, dst] = features[j, pick]
    return out


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation with no fixed point (every segment gets another segment's stream); n >= 2."""
    while True:
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return perm


def reliance_check(predict: Callable[[dict], np.ndarray], arrays: dict, intact: dict,
                   metrics: Callable[[np.ndarray, np.ndarray], dict], n_permutations: int,
                   seed: int = PERMUTATION_SEED) -> dict:
    """{"acoustic": {metric: mean delta}, "visual": {...}, "draws": {"acoustic": {metric: [delta per draw]},
    "visual": {...}}, "permutations": R, "seed": seed}; ``intact`` are the metrics of the unpermuted split,
    ``predict`` maps arrays -> predictions. Same draws for every run."""
    n = len(arrays["label"])
    out: dict = {"permutations": int(n_permutations), "seed": seed,
                 "direction": "metric with the stream permuted across test segments minus intact"}
    if n_permutations == 0 or n < 2:
        out["note"] = "not run (eval.reliance_permutations is 0 or the split has < 2 segments)"
        return out
    for name, key in MODALITY_KEYS.items():
        rng = np.random.default_rng([seed, 0 if name == "acoustic" else 1])
        deltas: dict[str, list[float]] = {k: [] for k in DELTA_METRICS}
        for _ in range(n_permutations):
            shuffled = dict(arrays)
            shuffled[key] = permute_modality(np.asarray(arrays[key]), np.asarray(arrays["attention_mask"]),
                                             derangement(n, rng))
            m = metrics(predict(shuffled), arrays["label"])
            for k in DELTA_METRICS:
                if m.get(k) is not None and intact.get(k) is not None:
                    deltas[k].append(float(m[k]) - float(intact[k]))
        out[name] = {k: (float(np.mean(v)) if v else None) for k, v in deltas.items()}
        out.setdefault("draws", {})[name] = deltas
    return out
