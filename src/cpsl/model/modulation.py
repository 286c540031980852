"""Gradient modulation (Eq. 5), Conflict-aware Penalty (Eq. 6) and gradient enhancement (OGM-GE).

    s_a = 1 / (MAE_a + eps),  s_v = 1 / (MAE_v + eps),
    c_a = 1 - tanh(alpha * ReLU(s_a / (s_v + eps)))   if s_a > s_v,   1 otherwise      (5)
    (c_v symmetric)

    conflict = (MAE_a < MAE_v) and (g_a > g_v),   c_a <- c_a * eta  if conflict       (6)
    (and symmetrically for v)

Choices where the paper is vague (also in docs/method.md):
- ``gm.coefficient``: "paper" (default) implements Eq. 5 exactly as written, which is also the form of the
  official OGM-GE code (``1 - tanh(alpha * relu(ratio))`` when ratio > 1). As written, the better modality's
  coefficient is always below 1 - tanh(alpha) (0.238 for alpha = 1) at every step, while the worse modality's
  is 1; Section 3.5's 0.45-0.8 are consistent with EPOCH MEANS of that form (steps where the modality is the
  worse one contribute 1). "shifted" is an alternative of ours, 1 - tanh(alpha * ReLU(ratio - 1)), which is
  1 at a tie and decays from there; it is NOT OGM's form.
- g_m (``mean_grad_norm``): the mean, over the encoder's parameter tensors that have a gradient, of each tensor's
  L2 gradient norm (one number per encoder, taken from the current, DDP-averaged gradients before scaling).
- imbalance degree (``imbalance_degree``, Figure 3b): |s_a - s_v| / (s_a + s_v), in [0, 1): 0 when the two
  modalities are equally good; it equals |MAE_v - MAE_a| / (MAE_a + MAE_v + 2 eps).
- GE: every parameter's gradient becomes c * g + N(0, s^2), drawn from the caller's ``torch.Generator`` so
  that every DDP rank draws the same noise; applied only when modulation is active and switch ``ge`` is on.
  ``gm.ge_noise`` picks s: "unmodulated" (default; the official OGM-GE code: std of the gradient BEFORE
  scaling) or "modulated" (std of c * g: the noise shrinks with the coefficient, so a strongly modulated
  encoder's update is not mostly noise). Unbiased std, 0 for a one-element tensor.
- Outside the epoch window (inclusive ends) or with neither gm nor cp on, nothing is touched and the telemetry
  reports c = 1, g = nan (not measured), no conflict.
The caller all-reduces the MAEs first (gradients are already all-reduced by DDP), so every rank decides the same.

Everything here is a tensor operation on the gradients' device: no value is read back to the host, so a training
step can run without host synchronisation and be captured in a CUDA graph (issue 9). The scalar decisions of
Eq. 5-6 are taken in float64 (as the Python floats they replaced); ``Telemetry.to_host()`` reads them when needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from cpsl.config.param_sections import CPSection, GMSection, section

FORMULAS = ("paper", "shifted")
GE_NOISE = ("unmodulated", "modulated")
# the per-step telemetry vector (float64, on the device); the first seven are TELEMETRY in cpsl.config.names
TELE_FIELDS = ("c_a", "c_v", "g_a", "g_v", "mae_a", "mae_v", "imbalance", "conflict_a", "conflict_v")
TELE = {name: i for i, name in enumerate(TELE_FIELDS)}


def _f64(x, device=None) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64, device=device)


def inverse_error_scores(mae_a, mae_v, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """s_m = 1 / (MAE_m + eps) (Eq. 5); floats or 0-dim tensors in, float64 tensors out."""
    return 1.0 / (_f64(mae_a) + eps), 1.0 / (_f64(mae_v) + eps)


def _coefficient(s_self: torch.Tensor, s_other: torch.Tensor, alpha: float, eps: float, formula: str) -> torch.Tensor:
    ratio = s_self / (s_other + eps)
    shifted = ratio if formula == "paper" else ratio - 1.0
    damped = 1.0 - torch.tanh(alpha * torch.relu(shifted))
    return torch.where(s_self > s_other, damped, torch.ones_like(damped))


def eq5_coefficients(mae_a, mae_v, alpha: float, eps: float,
                     formula: str = "paper") -> tuple[torch.Tensor, torch.Tensor]:
    """(c_a, c_v) of Eq. 5; ``formula`` "paper" (as written) or "shifted" (ratio - 1 inside the ReLU)."""
    if formula not in FORMULAS:
        raise ValueError(f"gm.coefficient: unknown formula {formula!r}; expected one of {', '.join(FORMULAS)}")
    s_a, s_v = inverse_error_scores(mae_a, mae_v, eps)
    return _coefficient(s_a, s_v, alpha, eps, formula), _coefficient(s_v, s_a, alpha, eps, formula)


def conflict_penalty(c_a, c_v, mae_a, mae_v, g_a, g_v, eta: float):
    """Eq. 6 and its symmetric form: the better modality that also has the larger mean gradient norm gets c * eta.
    Returns (c_a, c_v, conflict_a, conflict_v) as tensors (coefficients float64, conflicts bool)."""
    mae_a, mae_v = _f64(mae_a), _f64(mae_v)
    g_a, g_v = torch.as_tensor(g_a), torch.as_tensor(g_v)
    conflict_a = (mae_a < mae_v) & (g_a > g_v)
    conflict_v = (mae_v < mae_a) & (g_v > g_a)
    c_a, c_v = _f64(c_a), _f64(c_v)
    return torch.where(conflict_a, c_a * eta, c_a), torch.where(conflict_v, c_v * eta, c_v), conflict_a, conflict_v


def in_window(epoch: int, start: int, end: int) -> bool:
    """Modulation window, inclusive at both ends (paper: epochs 0-25)."""
    return start <= epoch <= end


def _grads(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters() if p.grad is not None]


def mean_grad_norm(module: nn.Module) -> torch.Tensor:
    """Mean over the module's parameter tensors that have a gradient of their L2 norm (float32; 0 if none)."""
    grads = _grads(module)
    if not grads:  # created on the module's device: no host-to-device copy inside a captured step
        return torch.zeros((), dtype=torch.float32, device=next(module.parameters()).device)
    return torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]).mean()


def imbalance_degree(mae_a, mae_v, eps: float) -> torch.Tensor:
    """|s_a - s_v| / (s_a + s_v) with s the inverse-error scores of Eq. 5."""
    s_a, s_v = inverse_error_scores(mae_a, mae_v, eps)
    return (s_a - s_v).abs() / (s_a + s_v)


def _scale_and_enhance(module: nn.Module, coefficient: torch.Tensor, enhance: bool,
                       generator: torch.Generator | None, noise_source: str = "unmodulated") -> None:
    if noise_source not in GE_NOISE:
        raise ValueError(f"gm.ge_noise: unknown noise source {noise_source!r}; expected one of {', '.join(GE_NOISE)}")
    for grad in _grads(module):
        if enhance:
            # std of the gradient before scaling (official OGM-GE) or after
            std = grad.float().std() if grad.numel() > 1 else grad.new_zeros((), dtype=torch.float32)
            if noise_source == "modulated":
                std = std * coefficient.abs()
            noise = torch.randn(grad.shape, generator=generator, device=generator.device, dtype=torch.float32)
            grad.mul_(coefficient).add_((noise.to(grad.device) * std).to(grad.dtype))
        else:
            grad.mul_(coefficient)


@dataclass
class Telemetry:
    """One step's modulation record: ``vector`` (float64, TELE_FIELDS, on the device) and two host-known flags."""

    vector: torch.Tensor
    active: bool  # inside the window with gm or cp on: the gradients were (possibly) scaled
    ge: bool      # GE noise was added

    def to_host(self) -> dict:
        """The record as Python values (a host read: the eager step and the tests use it)."""
        values = self.vector.tolist()
        out = {name: values[i] for i, name in enumerate(TELE_FIELDS)}
        out.update(conflict_a=bool(out["conflict_a"]), conflict_v=bool(out["conflict_v"]), active=self.active,
                   ge=self.ge)
        return out


def modulate_gradients(
    encoders: dict[str, nn.Module],
    mae_a,
    mae_v,
    epoch: int,
    gm: GMSection | Mapping,
    cp: CPSection | Mapping,
    switches,
    generator: torch.Generator | None,
) -> Telemetry:
    """Scale the a/v encoder gradients in place (Eq. 5, Eq. 6, GE) and return the step's Telemetry.
    ``mae_a``/``mae_v``: the unimodal heads' batch MAEs (0-dim tensors on the device, or floats); ``gm``, ``cp``:
    the run's sections (cpsl.config.param_sections; a mapping is read as one, its missing keys taking the schema's
    defaults)."""
    gm, cp = section(GMSection, gm), section(CPSection, cp)
    for key in ("a", "v"):
        if key not in encoders:
            raise KeyError(f"modulate_gradients: encoders need keys 'a' and 'v' (missing {key!r})")
    device = next(encoders["a"].parameters()).device
    mae_a, mae_v = _f64(mae_a, device), _f64(mae_v, device)
    eps = gm.eps
    active = in_window(epoch, gm.start_epoch, gm.end_epoch) and (switches.gm or switches.cp)
    one, nan = torch.ones((), dtype=torch.float64, device=device), torch.full((), float("nan"), dtype=torch.float64,
                                                                               device=device)
    imbalance = imbalance_degree(mae_a, mae_v, eps)
    if not active:
        vector = torch.stack([one, one, nan, nan, mae_a, mae_v, imbalance, 0 * one, 0 * one])
        return Telemetry(vector, active=False, ge=False)
    if switches.ge and generator is None:
        raise ValueError("modulate_gradients: switch 'ge' needs a torch.Generator shared (same seed) by every rank")
    g_a, g_v = mean_grad_norm(encoders["a"]), mean_grad_norm(encoders["v"])
    if switches.gm:
        c_a, c_v = eq5_coefficients(mae_a, mae_v, gm.alpha, eps, gm.coefficient)
    else:
        c_a, c_v = one, one
    conflict_a = conflict_v = torch.zeros((), dtype=torch.bool, device=device)
    if switches.cp:
        c_a, c_v, conflict_a, conflict_v = conflict_penalty(c_a, c_v, mae_a, mae_v, g_a, g_v, cp.eta)
    for key, c in (("a", c_a), ("v", c_v)):  # fixed order: identical noise draws on every rank
        _scale_and_enhance(encoders[key], c, switches.ge, generator, gm.ge_noise)
    vector = torch.stack([c_a, c_v, g_a.double(), g_v.double(), mae_a, mae_v, imbalance, conflict_a.double(),
                          conflict_v.double()])
    return Telemetry(vector, active=True, ge=bool(switches.ge))
