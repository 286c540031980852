"""Pooling and the BERT-style regression head shared by the CP+SL task head and the baselines."""
from __future__ import annotations

import torch
from torch import nn

POOLINGS = ("cls", "mean")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (B,L,d) over tokens where mask (B,L) is true; (B,d). A row with no valid token gives 0."""
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


def pool(x: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "cls":
        return x[:, 0]
    if how == "mean":
        return masked_mean(x, mask)
    raise ValueError(f"model.pooling: unknown pooling {how!r}; expected one of {', '.join(POOLINGS)}")


class PoolerRegressionHead(nn.Module):
    """Hugging Face's BERT sequence-regression head: the pooled token (``pooling``: "cls" = position 0, "mean" =
    masked mean) -> Linear(d, d) -> tanh (BERT's pooler) -> Dropout -> Linear(d, 1). The text encoders are loaded
    without their pooler (cpsl.nn.text_encoder), so this pooler is newly initialised, as DeBERTa's always is.
    Used by the baselines whose code regresses from BERT's pooled output (MAG)."""

    def __init__(self, text_dim: int, dropout: float, pooling: str = "cls"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")
        self.pooling = pooling
        self.pooler = nn.Linear(text_dim, text_dim)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(text_dim, 1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled = torch.tanh(self.pooler(pool(h, mask, self.pooling)))
        return self.out(self.dropout(pooled)).squeeze(-1)
