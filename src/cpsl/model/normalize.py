"""Min-max normalisation of acoustic/visual features (Section 3.1: "min-max normalized per mini-batch").

For every feature, min and max are taken over the valid WORD positions of the mini-batch only (the
``feature_mask``: padding, [CLS] and [SEP] carry all-zero features and would pull the min to 0); every
other position is exactly 0 after normalisation. A feature that is constant over the batch (max == min)
maps to 0 rather than dividing by zero. No gradient flows through the statistics (they describe the
data), but the normalised values are an affine function of the inputs, so d prediction / d input exists.

``MinMaxNormalizer`` keeps running statistics, as BatchNorm does, so that evaluation never depends on
which segments share a batch (``mode``):

- "running" (default): training normalises each mini-batch with its own min/max (the paper) and updates
  an exponential moving average of them (``momentum``, BatchNorm's 0.1); evaluation uses the averages,
  so a segment gets the same prediction alone or inside any batch.
- "batch": the paper read literally at evaluation too: each evaluation batch uses its own min/max
  (the evaluation then runs in batches of ``train.batch_size``, see cpsl.model.inference).

Under DDP the training "mini-batch" is the GLOBAL batch: min and max are all-reduced (MIN/MAX) so that
2 processes x batch 4 normalise (and update the running statistics) exactly like 1 process x batch 8.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

NORM_MODES = ("running", "batch")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@torch.no_grad()
def batch_min_max(x: torch.Tensor, mask: torch.Tensor, sync: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature (min, max) of ``x`` (B, L, d) over positions where ``mask`` (B, L) is true; +inf/-inf
    for a feature with no valid position. ``sync=None`` all-reduces when torch.distributed is initialised."""
    if x.dim() != 3 or mask.shape != x.shape[:2]:
        raise ValueError(f"min-max normalisation: expected x (B,L,d) and mask (B,L), got {tuple(x.shape)} and "
                         f"{tuple(mask.shape)}")
    x = x.float()
    valid = mask.bool().unsqueeze(-1)
    inf = torch.full((), float("inf"), device=x.device)  # a fill kernel: no host-to-device copy (CUDA graphs)
    lo = torch.where(valid, x, inf).amin(dim=(0, 1))
    hi = torch.where(valid, x, -inf).amax(dim=(0, 1))
    if _distributed() if sync is None else sync:
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return lo, hi


def apply_min_max(x: torch.Tensor, mask: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """(x - lo) / (hi - lo) at masked positions, 0 elsewhere and for constant / unseen features."""
    span = (hi - lo).detach()
    usable = torch.isfinite(span) & (span > 0)
    out = (x.float() - torch.where(usable, lo.detach(), 0)) / torch.where(usable, span, 1)
    return torch.where(mask.bool().unsqueeze(-1) & usable, out, torch.zeros((), device=x.device))


def minmax_normalize(x: torch.Tensor, mask: torch.Tensor, sync: bool | None = None) -> torch.Tensor:
    """Normalise ``x`` with the min/max of this very batch (the paper's per-mini-batch definition)."""
    lo, hi = batch_min_max(x, mask, sync)
    return apply_min_max(x, mask, lo, hi)


class MinMaxNormalizer(nn.Module):
    """Per-mini-batch min-max normalisation with BatchNorm-style running statistics (see module docstring).
    The running min/max are buffers, so they travel in the state dict (best.pt) with the weights."""

    def __init__(self, num_features: int, mode: str = "running", momentum: float = 0.1):
        super().__init__()
        if mode not in NORM_MODES:
            raise ValueError(f"model.eval_norm: unknown mode {mode!r}; expected one of {', '.join(NORM_MODES)}")
        self.mode, self.momentum = mode, momentum
        self.register_buffer("running_min", torch.zeros(num_features))
        self.register_buffer("running_max", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _update(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        seen = torch.isfinite(lo) & torch.isfinite(hi)  # a feature with no valid position keeps its average
        first = self.num_batches_tracked == 0
        m = torch.where(first, torch.ones((), device=lo.device), torch.full((), self.momentum, device=lo.device))
        for running, batch in ((self.running_min, lo), (self.running_max, hi)):
            running.copy_(torch.where(seen, torch.lerp(running, torch.where(seen, batch, 0), m), running))
        self.num_batches_tracked.add_(1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, sync: bool | None = None) -> torch.Tensor:
        if self.training or self.mode == "batch":
            lo, hi = batch_min_max(x, mask, sync if self.training else False)
            if self.training:
                self._update(lo, hi)
            return apply_min_max(x, mask, lo, hi)
        return apply_min_max(x, mask, self.running_min, self.running_max)
