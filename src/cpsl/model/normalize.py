"""Per-mini-batch min-max normalisation of acoustic/visual features (Section 3.1).

For every feature, min and max are taken over the VALID tokens of the mini-batch only (padding would
otherwise pull the min to 0); padded tokens stay exactly 0 after normalisation. A feature that is
constant over the batch (max == min) maps to 0 rather than dividing by zero.

Under DDP the "mini-batch" is the GLOBAL batch: min and max are all-reduced (MIN/MAX) so that
2 processes x batch 4 normalise exactly like 1 process x batch 8. ``sync`` lets the caller turn that off
(the model syncs only in training mode, so evaluation on one rank can never wait on the others).
No gradient flows through the statistics: the inputs are data.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@torch.no_grad()
def minmax_normalize(x: torch.Tensor, mask: torch.Tensor, sync: bool | None = None) -> torch.Tensor:
    """Min-max normalise ``x`` (B, L, d) per feature over the tokens where ``mask`` (B, L) is true.

    ``sync=None`` all-reduces when torch.distributed is initialised; True/False forces it.
    """
    if x.dim() != 3 or mask.shape != x.shape[:2]:
        raise ValueError(f"minmax_normalize: expected x (B,L,d) and mask (B,L), got {tuple(x.shape)} and {tuple(mask.shape)}")
    x = x.float()
    valid = mask.bool().unsqueeze(-1)
    inf = torch.tensor(float("inf"), device=x.device)
    lo = torch.where(valid, x, inf).amin(dim=(0, 1))
    hi = torch.where(valid, x, -inf).amax(dim=(0, 1))
    if _distributed() if sync is None else sync:
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    span = hi - lo
    # constant features (span 0) and features with no valid token at all (span nan/-inf) -> 0
    usable = torch.isfinite(span) & (span > 0)
    out = (x - torch.where(usable, lo, 0)) / torch.where(usable, span, 1)
    return torch.where(valid & usable, out, torch.zeros((), device=x.device))
