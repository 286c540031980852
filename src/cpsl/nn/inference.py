"""Deterministic inference over a split: fixed order, fixed batch size, eval mode, no gradients.

With ``model.eval_norm: running`` (default) the min-max normalisation uses the running statistics kept
during training, so every segment's prediction is independent of the batch it is in (and of the batch
size, up to float round-off). With ``batch`` (the paper read literally) each batch is normalised with its
own min/max and the evaluation runs in batches of ``train.batch_size`` in cache order
(:func:`inference_batch_size`), so predictions depend on the neighbours. A DDP-wrapped model is unwrapped
and the normalisation is never all-reduced here, so rank 0 can evaluate alone. The model's train/eval mode
is restored afterwards. Losses, when ``losses`` (out, batch) -> {term: scalar} is given (a row's recipe:
cpsl.train.recipe), are averaged over segments (each batch weighted by its size). Only ``prediction`` is required
of the model's output; ``uni_a``/``uni_v`` are the CP+SL model's unimodal heads (None for a model without them).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cpsl.config.names import TENSOR_KEYS as REQUIRED


@dataclass
class InferenceResult:
    prediction: np.ndarray  # (N,)
    uni_a: np.ndarray | None  # (N,), CP+SL's unimodal heads only
    uni_v: np.ndarray | None
    losses: dict[str, float] | None


def _check(arrays: dict) -> int:
    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        raise KeyError(f"run_inference: arrays is missing {', '.join(missing)} (need {', '.join(REQUIRED)})")
    n = len(arrays["label"])
    bad = {k: len(arrays[k]) for k in REQUIRED if len(arrays[k]) != n}
    if bad:
        raise ValueError(f"run_inference: arrays disagree on the number of segments: label has {n}, {bad}")
    return n


def inference_batch_size(params: dict) -> int:
    """``execution.eval_batch_size`` with running statistics; ``train.batch_size`` for the literal per-batch mode,
    whose normalisation statistics must come from batches of the size the model was trained with."""
    # a baseline's run params have no CP+SL model section: its predictions never depend on the batch
    if (params.get("model") or {}).get("eval_norm") == "batch":
        return int(params["train"]["batch_size"])
    return int(params["execution"]["eval_batch_size"])


def run_inference(model: nn.Module, arrays: dict, batch_size: int, device, losses=None) -> InferenceResult:
    if batch_size < 1:
        raise ValueError(f"run_inference: batch_size must be >= 1, got {batch_size}")
    n = _check(arrays)
    model = getattr(model, "module", model)  # DDP wrapper: run the bare model, no collective calls
    was_training = model.training
    model.eval()
    preds, uni_a, uni_v = [], [], []
    sums: dict[str, float] = {}
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                sl = slice(start, min(start + batch_size, n))
                batch = {
                    "input_ids": torch.as_tensor(np.asarray(arrays["input_ids"][sl]), dtype=torch.long, device=device),
                    "attention_mask": torch.as_tensor(np.asarray(arrays["attention_mask"][sl]), dtype=torch.long,
                                                      device=device),
                    "acoustic": torch.as_tensor(np.asarray(arrays["acoustic"][sl]), dtype=torch.float32, device=device),
                    "visual": torch.as_tensor(np.asarray(arrays["visual"][sl]), dtype=torch.float32, device=device),
                }
                out = model(**batch)
                preds.append(out.prediction.float().cpu())
                if getattr(out, "uni", None) is not None:
                    uni_a.append(out.uni["a"].float().cpu())
                    uni_v.append(out.uni["v"].float().cpu())
                if losses is not None:
                    batch["label"] = torch.as_tensor(np.asarray(arrays["label"][sl]), dtype=torch.float32,
                                                     device=device)
                    size = sl.stop - sl.start
                    for k, v in losses(out, batch).items():
                        sums[k] = sums.get(k, 0.0) + float(v) * size
    finally:
        model.train(was_training)
    cat = lambda xs: torch.cat(xs).numpy() if xs else np.zeros(0, dtype=np.float32)  # noqa: E731
    means = {k: v / n for k, v in sums.items()} if losses is not None and n else None
    return InferenceResult(cat(preds), cat(uni_a) if uni_a else None, cat(uni_v) if uni_v else None, means)
