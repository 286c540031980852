"""Losses every row's objective may use: the regression task loss and the mean over valid tokens."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_token_mean(err: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """err (B,L) -> mean over valid tokens of each sample, then over samples (rows without a valid token count 0)."""
    w = mask.to(err.dtype)
    per_sample = (err * w).sum(1) / w.sum(1).clamp_min(1.0)
    return per_sample.mean()


def regression_loss(pred: torch.Tensor, label: torch.Tensor, task: str) -> torch.Tensor:
    pred, label = pred.float().reshape(-1), label.float().reshape(-1)
    if task == "l1":
        return F.l1_loss(pred, label)
    if task == "mse":
        return F.mse_loss(pred, label)
    raise ValueError(f"loss.task: unknown task loss {task!r}; expected 'l1' or 'mse'")
