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
"""
from __future__ import annotations

import math

import torch
from torch import nn

FORMULAS = ("paper", "shifted")
GE_NOISE = ("unmodulated", "modulated")


def inverse_error_scores(mae_a: float, mae_v: float, eps: float) -> tuple[float, float]:
    """s_m = 1 / (MAE_m + eps) (Eq. 5)."""
    return 1.0 / (float(mae_a) + eps), 1.0 / (float(mae_v) + eps)


def _coefficient(s_self: float, s_other: float, alpha: float, eps: float, formula: str) -> float:
    if not s_self > s_other:
        return 1.0
    ratio = s_self / (s_other + eps)
    shifted = ratio if formula == "paper" else ratio - 1.0
    return 1.0 - math.tanh(alpha * max(shifted, 0.0))


def eq5_coefficients(mae_a: float, mae_v: float, alpha: float, eps: float, formula: str = "paper") -> tuple[float, float]:
    """(c_a, c_v) of Eq. 5; ``formula`` "paper" (as written) or "shifted" (ratio - 1 inside the ReLU)."""
    if formula not in FORMULAS:
        raise ValueError(f"gm.coefficient: unknown formula {formula!r}; expected one of {', '.join(FORMULAS)}")
    s_a, s_v = inverse_error_scores(mae_a, mae_v, eps)
    return _coefficient(s_a, s_v, alpha, eps, formula), _coefficient(s_v, s_a, alpha, eps, formula)


def conflict_penalty(c_a: float, c_v: float, mae_a: float, mae_v: float, g_a: float, g_v: float, eta: float) -> tuple[float, float, bool, bool]:
    """Eq. 6 and its symmetric form: the better modality that also has the larger mean gradient norm gets c * eta."""
    conflict_a = bool(mae_a < mae_v and g_a > g_v)
    conflict_v = bool(mae_v < mae_a and g_v > g_a)
    return (c_a * eta if conflict_a else c_a), (c_v * eta if conflict_v else c_v), conflict_a, conflict_v


def in_window(epoch: int, start: int, end: int) -> bool:
    """Modulation window, inclusive at both ends (paper: epochs 0-25)."""
    return start <= epoch <= end


def _grads(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters() if p.grad is not None]


def mean_grad_norm(module: nn.Module) -> float:
    """Mean over the module's parameter tensors that have a gradient of their L2 norm (0.0 if none)."""
    grads = _grads(module)
    if not grads:
        return 0.0
    return torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]).mean().item()


def imbalance_degree(mae_a: float, mae_v: float, eps: float) -> float:
    """|s_a - s_v| / (s_a + s_v) with s the inverse-error scores of Eq. 5."""
    s_a, s_v = inverse_error_scores(mae_a, mae_v, eps)
    return abs(s_a - s_v) / (s_a + s_v)


def _scale_and_enhance(module: nn.Module, coefficient: float, enhance: bool, generator: torch.Generator | None,
                       noise_source: str = "unmodulated") -> None:
    if noise_source not in GE_NOISE:
        raise ValueError(f"gm.ge_noise: unknown noise source {noise_source!r}; expected one of {', '.join(GE_NOISE)}")
    for grad in _grads(module):
        if enhance:
            # std of the gradient before scaling (official OGM-GE) or after; kept on device (no host sync)
            std = grad.float().std() if grad.numel() > 1 else grad.new_zeros((), dtype=torch.float32)
            if noise_source == "modulated":
                std = std * abs(coefficient)
            noise = torch.randn(grad.shape, generator=generator, device=generator.device, dtype=torch.float32)
            grad.mul_(coefficient).add_((noise.to(grad.device) * std).to(grad.dtype))
        else:
            grad.mul_(coefficient)


def modulate_gradients(
    encoders: dict[str, nn.Module],
    mae: dict[str, float],
    epoch: int,
    gm_params: dict,
    cp_params: dict,
    switches,
    generator: torch.Generator | None,
) -> dict:
    """Scale the a/v encoder gradients in place (Eq. 5, Eq. 6, GE) and return the telemetry dict
    {"c_a","c_v","g_a","g_v","mae_a","mae_v","conflict_a","conflict_v","imbalance","active","ge"}
    (``ge``: GE noise was added this step)."""
    for key in ("a", "v"):
        if key not in encoders or key not in mae:
            raise KeyError(f"modulate_gradients: encoders and mae need keys 'a' and 'v' (missing {key!r})")
    mae_a, mae_v = float(mae["a"]), float(mae["v"])
    eps = gm_params["eps"]
    active = in_window(epoch, gm_params["start_epoch"], gm_params["end_epoch"]) and (switches.gm or switches.cp)
    tele = {"c_a": 1.0, "c_v": 1.0, "g_a": math.nan, "g_v": math.nan, "mae_a": mae_a, "mae_v": mae_v,
            "conflict_a": False, "conflict_v": False, "imbalance": imbalance_degree(mae_a, mae_v, eps),
            "active": bool(active), "ge": False}
    if not active:
        return tele
    g_a, g_v = mean_grad_norm(encoders["a"]), mean_grad_norm(encoders["v"])
    if switches.gm:
        c_a, c_v = eq5_coefficients(mae_a, mae_v, gm_params["alpha"], eps, gm_params.get("coefficient", "paper"))
    else:
        c_a, c_v = 1.0, 1.0
    conflict_a = conflict_v = False
    if switches.cp:
        c_a, c_v, conflict_a, conflict_v = conflict_penalty(c_a, c_v, mae_a, mae_v, g_a, g_v, cp_params["eta"])
    if switches.ge and generator is None:
        raise ValueError("modulate_gradients: switch 'ge' needs a torch.Generator shared (same seed) by every rank")
    for key, c in (("a", c_a), ("v", c_v)):  # fixed order: identical noise draws on every rank
        _scale_and_enhance(encoders[key], c, switches.ge, generator, gm_params.get("ge_noise", "unmodulated"))
    tele.update(c_a=c_a, c_v=c_v, g_a=g_a, g_v=g_v, conflict_a=conflict_a, conflict_v=conflict_v, ge=bool(switches.ge))
    return tele
