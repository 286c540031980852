"""Token masks every row's model uses: trailing-padding trimming and the word positions (no [CLS]/[SEP])."""
from __future__ import annotations

import torch


def trimmed_length(mask: torch.Tensor) -> int | None:
    """The sequence length without the trailing positions that are padding in every row of ``mask`` (B,L), or None
    when there is nothing to drop. A host read of the mask (see ``trim_padding``)."""
    if mask.shape[1] and mask.any():
        keep = int(mask.any(0).nonzero().max()) + 1
        if keep < mask.shape[1]:
            return keep
    return None


def word_positions(mask: torch.Tensor) -> torch.Tensor:
    """(B,L) bool: valid tokens except each row's first ([CLS]) and last valid ([SEP]) position.
    Rows are a valid prefix followed by padding, as the aligner writes them."""
    mask = mask.bool()
    pos = torch.arange(mask.shape[1], device=mask.device)
    last = mask.sum(1, keepdim=True) - 1
    return mask & (pos > 0) & (pos < last)
