"""Adaptive Modality Encoding (AME), Eq. 1 of the paper.

    mu_m      = f_m^(mu)(X_m),
    sigma^2_m = f_m^(sigma^2)(X_m),
    Z_m       = mu_m + eps (.) sqrt(sigma^2_m + varepsilon),   eps ~ N(0, I)          (1)

Choices where the paper is vague:
- f^(mu) and f^(sigma^2) are separate per-token MLPs: Linear(d_m, h) -> GELU -> Dropout(0.3) -> Linear(h, h)
  with h = model.intermediate_dim (256); h is also the latent width of mu, sigma^2 and Z.
- sigma^2 must be positive: the variance head ends in softplus (smooth, no exp overflow, unlike a log-variance
  parameterisation); varepsilon (model.var_eps) keeps the sqrt differentiable at 0.
- Z is sampled only when the module is training AND ``sample`` is on (switch ``ame``); otherwise Z = mu, so
  evaluation is always deterministic and the A0-style baseline keeps the same architecture.
- eps is drawn from torch's global RNG (``torch.randn_like``) so that a checkpointed RNG state resumes exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _mlp(d_in: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))


class AdaptiveModalityEncoder(nn.Module):
    """Eq. 1 for one modality: X_m (B,L,d_m) -> (mu, var, Z), each (B,L,h)."""

    def __init__(self, input_dim: int, latent_dim: int = 256, dropout: float = 0.3, var_eps: float = 1e-6,
                 sample: bool = True):
        super().__init__()
        self.f_mu = _mlp(input_dim, latent_dim, dropout)
        self.f_var = _mlp(input_dim, latent_dim, dropout)
        self.var_eps = var_eps
        self.sample = sample

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu = self.f_mu(x)
        var = F.softplus(self.f_var(x))
        if self.training and self.sample:
            z = mu + torch.randn_like(mu) * torch.sqrt(var + self.var_eps)
        else:
            z = mu
        return mu, var, z
