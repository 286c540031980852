"""Cross-modal fusion and residual injection into the text stream, Eq. 2 of the paper.

    P_av = tanh(W_p F_av),
    H    = T + beta * P_av                                                           (2)

F_av (B, L, d_f) comes from a configurable block (``model.fusion``):
- "gated" (default): the gated multimodal unit of Arevalo et al. 2017 (arevalo2017gated):
  h_a = tanh(W_a Z_a), h_v = tanh(W_v Z_v), g = sigmoid(W_g [Z_a; Z_v]), F_av = g * h_a + (1 - g) * h_v;
- "concat": F_av = W_c [Z_a; Z_v];
- "sum":    F_av = W_a Z_a + W_v Z_v.
P_av is zeroed at padded tokens so that padding never shifts T (matters for mean pooling).
"""
from __future__ import annotations

import torch
from torch import nn

FUSIONS = ("gated", "concat", "sum")


class FusionBlock(nn.Module):
    """Z_a, Z_v (B,L,h) -> F_av (B,L,d_f)."""

    def __init__(self, latent_dim: int, fusion_dim: int = 512, kind: str = "gated"):
        super().__init__()
        if kind not in FUSIONS:
            raise ValueError(f"model.fusion: unknown fusion {kind!r}; expected one of {', '.join(FUSIONS)}")
        self.kind = kind
        if kind == "concat":
            self.proj = nn.Linear(2 * latent_dim, fusion_dim)
        else:
            self.proj_a = nn.Linear(latent_dim, fusion_dim)
            self.proj_v = nn.Linear(latent_dim, fusion_dim)
            if kind == "gated":
                self.gate = nn.Linear(2 * latent_dim, fusion_dim)

    def forward(self, z_a: torch.Tensor, z_v: torch.Tensor) -> torch.Tensor:
        if self.kind == "concat":
            return self.proj(torch.cat([z_a, z_v], dim=-1))
        if self.kind == "sum":
            return self.proj_a(z_a) + self.proj_v(z_v)
        g = torch.sigmoid(self.gate(torch.cat([z_a, z_v], dim=-1)))
        return g * torch.tanh(self.proj_a(z_a)) + (1 - g) * torch.tanh(self.proj_v(z_v))


class ResidualInjection(nn.Module):
    """Eq. 2: H = T + beta * tanh(W_p F_av) (zero at padded tokens)."""

    def __init__(self, fusion_dim: int, text_dim: int, beta: float = 1.0):
        super().__init__()
        self.w_p = nn.Linear(fusion_dim, text_dim)
        self.beta = beta

    def forward(self, text: torch.Tensor, fused: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        p = torch.tanh(self.w_p(fused)) * mask.unsqueeze(-1).to(fused.dtype)
        return text + self.beta * p
