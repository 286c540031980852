"""How far evaluation inputs leave the range the model was trained on (issue 22).

Training normalises each mini-batch with its own min/max, so every training input of the a/v encoders lies in
[0, 1] (``cpsl.nn.normalize.TRAIN_RANGE``). At evaluation the kept statistics are used instead; on heavy-tailed
features (real COVAREP/FACET) they can map a value far outside it. ``out_of_range`` measures, per stream and
split, the share of normalised word-position values outside [0, 1] BEFORE any clamp (with ``model.eval_norm:
clamped`` that is the share the clamp cut) and the largest |value|; ``warning`` makes the one stderr line
``cpsl evaluate`` prints when a share is large. A model without the CP+SL normalisers (a baseline) gets None.
"""
from __future__ import annotations

import numpy as np
import torch

from cpsl.nn.normalize import TRAIN_RANGE
from cpsl.nn.tokens import word_positions

STREAMS = {"a": "acoustic", "v": "visual"}
# evaluate prints a line when a split has more than WARN_SHARE of its inputs outside [0, 1] or one beyond
# WARN_MAX_ABS. Not lower: running averages of per-batch extremes are narrower than a split's range even on
# Gaussian data (the demo's valid split: 3.9 % outside, largest |x| 1.27), which is the mode working, not a fault;
# the real COVAREP/FACET streams: 12.5-14 % outside, largest |x| in the hundreds to millions.
WARN_SHARE = 0.10
WARN_MAX_ABS = 10.0
_TOL = 1e-6  # float round-off at the ends of the range


@torch.no_grad()
def _split_range(normalizer, arrays: dict, key: str, batch_size: int) -> dict:

    outside, total, largest = 0, 0, 0.0
    n = len(arrays["attention_mask"])
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        fmask = word_positions(torch.as_tensor(np.asarray(arrays["attention_mask"][sl])))
        x = torch.as_tensor(np.asarray(arrays[key][sl]), dtype=torch.float32)
        # the literal per-batch mode normalises each batch with its own extremes; every other mode uses the kept ones
        norm = normalizer(x, fmask, sync=False) if normalizer.mode == "batch" else normalizer.unclamped(x, fmask)
        values = norm[fmask]
        outside += int(((values < TRAIN_RANGE[0] - _TOL) | (values > TRAIN_RANGE[1] + _TOL)).sum())
        total += values.numel()
        largest = max(largest, float(values.abs().max()) if values.numel() else 0.0)
    return {"share_outside": outside / total if total else 0.0, "max_abs": largest}


def out_of_range(model: torch.nn.Module, splits: dict[str, dict], batch_size: int) -> dict | None:
    """{"mode": eval_norm, "acoustic": {split: {"share_outside", "max_abs"}}, "visual": {...}} for a model with
    ``normalizers`` (CP+SL), None otherwise. ``splits``: split -> cache arrays."""
    normalizers = getattr(getattr(model, "module", model), "normalizers", None)
    if normalizers is None:
        return None
    was_training = normalizers.training
    normalizers.eval()
    try:
        result: dict = {"mode": normalizers["a"].mode, "range": list(TRAIN_RANGE)}
        for m, key in STREAMS.items():
            result[key] = {split: _split_range(normalizers[m], arrays, key, batch_size)
                           for split, arrays in splits.items()}
    finally:
        normalizers.train(was_training)
    return result


def warning(report: dict | None, where: str) -> str | None:
    """One line naming the worst stream/split (by share) when a share is above WARN_SHARE or a value beyond
    WARN_MAX_ABS, else None."""
    if not report:
        return None
    cells = [(report[key][split]["share_outside"], key, split) for key in STREAMS.values() for split in report[key]]
    flagged = [c for c in cells if c[0] > WARN_SHARE or report[c[1]][c[2]]["max_abs"] > WARN_MAX_ABS]
    if not flagged:
        return None
    share, key, split = max(flagged)
    fate = "clamped to it" if report["mode"] == "clamped" else "given to the model as they are"
    return (f"{where}: {100 * share:.1f} % of the {split} {key} inputs fall outside the training range [0, 1] after "
            f"min-max normalisation (model.eval_norm: {report['mode']}; largest |x| "
            f"{report[key][split]['max_abs']:.3g}), {fate}; metrics.json 'input_range' has every stream and split")
