"""Min-max normalisation of acoustic/visual features (Section 3.1: "min-max normalized per mini-batch").

For every feature, min and max are taken over the valid WORD positions of the mini-batch only (the
``feature_mask``: padding, [CLS] and [SEP] carry all-zero features and would pull the min to 0); every
other position is exactly 0 after normalisation. A feature that is constant over the batch (max == min)
maps to 0 rather than dividing by zero. No gradient flows through the statistics (they describe the
data), but the normalised values are an affine function of the inputs, so d prediction / d input exists.

``MinMaxNormalizer`` keeps running statistics, as BatchNorm does, so that evaluation never depends on
which segments share a batch (``mode``):

- "clamped" (default, issue 22): training as the paper (each mini-batch with its own min/max), keeping an
  exponential moving average of the batch extremes (``momentum``, BatchNorm's 0.1); evaluation uses the
  averages and clamps to [0, 1], the range every training input lay in. On heavy-tailed features (real
  COVAREP/FACET) the averaged span is narrower than the data's, so without the clamp one extreme frame
  becomes an input of 10^3 the encoders never saw (docs/method.md has the comparison).
- "running": the same averages without the clamp (the default of issue 7; kept to compare).
- "extremes": the running minimum of the batch minima and maximum of the maxima, i.e. the training
  data's true extremes after one epoch (the same as statistics of the training split fixed before
  training at every validation, which follows a full epoch); evaluation uses them unclamped.
- "batch": the paper read literally at evaluation too: each evaluation batch uses its own min/max
  (the evaluation then runs in batches of ``train.batch_size``, see cpsl.nn.inference).

Every mode but "batch" gives a segment the same prediction alone or inside any batch. The modes share the
buffers (``running_min``/``running_max``), so a checkpoint's state dict has the same keys in every mode.

Under DDP the training "mini-batch" is the GLOBAL batch: min and max are all-reduced (MIN/MAX) so that
2 processes x batch 4 normalise (and update the running statistics) exactly like 1 process x batch 8.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

NORM_MODES = ("clamped", "running", "extremes", "batch")
DEFAULT_NORM_MODE = "clamped"
# the range every training input lies in (per-batch min-max); evaluation inputs outside it are out of range
TRAIN_RANGE = (0.0, 1.0)


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

    def __init__(self, num_features: int, mode: str = DEFAULT_NORM_MODE, momentum: float = 0.1):
        super().__init__()
        if mode not in NORM_MODES:
            raise ValueError(f"model.eval_norm: unknown mode {mode!r}; expected one of {', '.join(NORM_MODES)}")
        self.mode, self.momentum = mode, momentum
        self.register_buffer("running_min", torch.zeros(num_features))
        self.register_buffer("running_max", torch.ones(num_features))
        if mode == "extremes":  # nothing seen yet (apply_min_max maps an infinite span to 0)
            self.running_min.fill_(float("inf"))
            self.running_max.fill_(float("-inf"))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _update(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        seen = torch.isfinite(lo) & torch.isfinite(hi)  # a feature with no valid position keeps its average
        if self.mode == "extremes":  # buffers start at +inf/-inf; an unseen feature's +inf/-inf changes nothing
            self.running_min.copy_(torch.minimum(self.running_min, lo))
            self.running_max.copy_(torch.maximum(self.running_max, hi))
        else:
            first = self.num_batches_tracked == 0
            m = torch.where(first, torch.ones((), device=lo.device), torch.full((), self.momentum, device=lo.device))
            for running, batch in ((self.running_min, lo), (self.running_max, hi)):
                running.copy_(torch.where(seen, torch.lerp(running, torch.where(seen, batch, 0), m), running))
        self.num_batches_tracked.add_(1)

    def unclamped(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` normalised with the kept statistics, before any clamp: what the range telemetry measures."""
        return apply_min_max(x, mask, self.running_min, self.running_max)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, sync: bool | None = None) -> torch.Tensor:
        if self.training or self.mode == "batch":
            lo, hi = batch_min_max(x, mask, sync if self.training else False)
            if self.training:
                self._update(lo, hi)
            return apply_min_max(x, mask, lo, hi)
        out = self.unclamped(x, mask)
        return out.clamp(*TRAIN_RANGE) if self.mode == "clamped" else out
