"""Synthetic subword-level caches with a label planted in chosen streams, for tests and studies.

``planted_splits`` returns the three splits in the cache layout (cpsl.formats.cache.write_cache) with rows shaped as
the aligner writes them: [CLS] word... [SEP] padding, all-zero a/v features at [CLS], [SEP] and padding.
``signal`` names the streams that carry the label:

- "text": one of 6 sentiment word ids, repeated at random word positions, encodes the label's polarity;
- "visual"/"acoustic": the first ``n_signal_dims`` features are shifted by ``gain * label`` at every word
  position (plus N(0, noise^2) everywhere), like the planted copy of the label in a MOSI mirror.

A stream not named carries noise only (text: random ids), so e.g. ``signal=("visual",)`` is a dataset whose
label is recoverable from the visual stream but NOT from the text: a model that never lets the visual stream
reach its prediction cannot beat predicting the mean.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

SENTIMENT_IDS = np.arange(100, 106)
POLARITY = np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0])
CLS_ID, SEP_ID = 1, 2


def planted_split(rng: np.random.Generator, n: int, seq_len: int, dims: tuple[int, int], vocab: int,
                  signal: Iterable[str], gain: float = 1.0, n_signal_dims: int = 2, noise: float = 1.0,
                  filler_ids: int = 20, prefix: str = "") -> dict:
    d_a, d_v = dims
    signal = set(signal)
    unknown = signal - {"text", "acoustic", "visual"}
    if unknown:
        raise ValueError(f"planted_split: unknown signal stream(s) {sorted(unknown)}")
    label = rng.uniform(-3, 3, size=n).round(1).astype(np.float32)
    lengths = rng.integers(max(4, seq_len // 2), seq_len + 1, size=n)  # incl. [CLS] and [SEP]
    pos = np.arange(seq_len)[None, :]
    mask = pos < lengths[:, None]
    words = mask & (pos > 0) & (pos < lengths[:, None] - 1)
    # filler words from a small pool, as real transcripts reuse common words (and a model cannot simply
    # memorise every training segment by its rare token ids)
    input_ids = np.where(mask, rng.integers(1000, min(vocab, 1000 + filler_ids), size=(n, seq_len)), 0)
    if "text" in signal:
        pick = np.abs(POLARITY[None, :] - label[:, None]).argmin(1)
        input_ids = np.where(words & (rng.random((n, seq_len)) < 0.5), SENTIMENT_IDS[pick][:, None], input_ids)
    input_ids[:, 0] = CLS_ID
    input_ids[np.arange(n), lengths - 1] = SEP_ID
    feats = {}
    for name, d in (("acoustic", d_a), ("visual", d_v)):
        x = rng.normal(scale=noise, size=(n, seq_len, d)).astype(np.float32)
        if name in signal:
            x[:, :, :n_signal_dims] += gain * label[:, None, None]
        feats[name] = x * words[..., None]  # zero at [CLS], [SEP] and padding, as the aligner writes them
    return {"input_ids": input_ids.astype(np.int64), "attention_mask": mask.astype(np.int8),
            "acoustic": feats["acoustic"], "visual": feats["visual"], "label": label,
            "segment_id": [f"{prefix}{i}" for i in range(n)]}


def planted_splits(sizes: dict[str, int], seq_len: int, dims: tuple[int, int], vocab: int, signal: Iterable[str],
                   seed: int = 0, **kwargs) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    return {split: planted_split(rng, n, seq_len, dims, vocab, signal, prefix=f"{split}_", **kwargs)
            for split, n in sizes.items()}


def zero_streams(splits: dict[str, dict], streams: Iterable[str] = ("acoustic", "visual")) -> dict[str, dict]:
    """The same splits with the named streams zeroed: the "a/v-zeroed" control of a planted-signal study."""
    return {s: {**arrays, **{k: np.zeros_like(arrays[k]) for k in streams}} for s, arrays in splits.items()}
