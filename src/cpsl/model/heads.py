"""Output heads: reconstruction decoders, unimodal regression heads and the task head.

Choices (the paper names these heads but not their shape):
- ``ReconstructionDecoder``: per-token MLP Z_m (h) -> h -> X_m (d_m), linear output (the target is the
  min-max normalised input in [0, 1]; no squashing, so the MSE gradient never saturates).
- ``UnimodalHead``: masked mean of Z_m over valid tokens (acoustic/visual have no [CLS] position) ->
  Linear(h, h) -> GELU -> Dropout(classifier_dropout) -> Linear(h, 1).
- ``TaskHead``: "H is normalized, pooled, and fed to the task head": LayerNorm(d_t) -> pooling ->
  Dropout(0.5) -> Linear(d_t, 1). Pooling is ``model.pooling``: "mean" (default; masked mean over valid
  tokens) or "cls" (position 0, the text encoder's [CLS]: since H = T + beta P_av is formed after the last
  text layer, [CLS] pooling never sees the acoustic/visual path; see docs/method.md).
- ``UnimodalHead`` averages over WORD positions (the model passes its feature mask).
"""
from __future__ import annotations

import torch
from torch import nn

from cpsl.nn.heads import POOLINGS, masked_mean, pool


class ReconstructionDecoder(nn.Module):
    def __init__(self, latent_dim: int, output_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, latent_dim), nn.GELU(), nn.Linear(latent_dim, output_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class UnimodalHead(nn.Module):
    def __init__(self, latent_dim: int, dropout: float = 0.5):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, latent_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(latent_dim, 1))

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(masked_mean(z, mask)).squeeze(-1)


class TaskHead(nn.Module):
    def __init__(self, text_dim: int, dropout: float = 0.5, pooling: str = "mean"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"model.pooling: unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")
        self.norm = nn.LayerNorm(text_dim)
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(text_dim, 1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(pool(self.norm(h), mask, self.pooling))).squeeze(-1)
