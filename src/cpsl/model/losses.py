"""Loss terms of Section 2, Step 3: Statistical Loss (Eq. 3) and the overall objective (Eq. 4).

    L_stat = 1/4 ( MSE(mu~_a, mu^_a) + MSE(sigma~^2_a, sigma^^2_a)
                 + MSE(mu~_v, mu^_v) + MSE(sigma~^2_v, sigma^^2_v) ),   MSE(X,Y) = 1/(BL) ||X - Y||^2   (3)

    L = L_task + l_recon L_recon + l_uni L_uni + l_div L_div + l_stat L_stat                             (4)
    L_recon = 1/2 ( ||A - A^||^2 + ||V - V^||^2 )

Choices where the paper is vague (also in docs/method.md):
- Positions. Every a/v token-level average is taken over WORD positions only (``out.feature_mask``: valid
  tokens minus [CLS]/[SEP], whose a/v features are all-zero by construction), per sample, then averaged over the batch:
  ``cpsl.nn.losses.masked_token_mean``. With no padding this is exactly 1/(BL) sum. Averaging per sample first
  (rather than over all valid tokens of the batch) makes each loss a mean of per-sample terms, so 2 DDP processes
  x batch 4 give the same gradient as 1 process x batch 8.
- Eq. 3 statistics: mu^_m, sigma^^2_m are the mean and the population variance (1/d_m) of the normalised input
  X_m over its feature dimension, per token (B,L); mu~_m, sigma~^2_m are the means over the hidden dimension of
  the encoder outputs mu_m and sigma^2_m (B,L).
- L_recon: the squared norms are normalised to a mean squared error per valid token and feature (a sum would
  scale with L and d_m and swamp every other term at lambda_recon = 1).
- L_task (``loss.task``): "l1" (default; the paper reports MAE) or "mse". L_uni is the mean over a, v of the
  same criterion applied to the unimodal heads.
- L_div: the paper only says it "encourages maximizing information entropy to avoid redundant representations".
  We use the negative Renyi-2 entropy of the normalised eigen-spectrum of each sample's token covariance of the
  fused features F_av: with C = Xc^T Xc (Xc: valid tokens, centred), p_i = lambda_i / sum lambda,
  H_2 = -log sum p_i^2 = log(tr(C)^2 / ||C||_F^2), computed without an eigen-decomposition (smooth gradients,
  cheap). L_div = -mean_b H_2 lies in [-log rank, 0]; minimising it spreads the features over more independent
  directions (less redundancy). A sample with fewer than 2 valid tokens has H_2 = 0.
- Disabled terms (switches recon/uni/div/sl) are still computed, detached, and reported with their key, but are
  excluded from "total" (so every Figure 2 panel exists for every ablation row).
"""
from __future__ import annotations

from typing import Mapping

import torch

from cpsl.config.ablations import Switches
from cpsl.config.names import LOSS_TERMS, MODALITIES
from cpsl.config.param_sections import LossSection, section
from cpsl.nn.losses import masked_token_mean, regression_loss

# term -> (switch attribute, its lambda's field of the loss section); "task" is always on with weight 1
_WEIGHTED = {"recon": ("recon", "recon"), "uni": ("uni", "uni"), "div": ("div", "div"), "stat": ("sl", "stat")}


def masked_mse(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 3's MSE(X, Y) = 1/(BL) ||X - Y||^2 for (B,L) tensors, over valid tokens (see module docstring)."""
    return masked_token_mean((x - y) ** 2, mask)


def statistical_loss(out) -> torch.Tensor:
    """Eq. 3 (Statistical Loss)."""
    terms = []
    for m in MODALITIES:
        x = out.inputs[m].float()
        mu_hat, var_hat = x.mean(-1), x.var(-1, unbiased=False)
        mu_tilde, var_tilde = out.mu[m].float().mean(-1), out.var[m].float().mean(-1)
        terms += [masked_mse(mu_tilde, mu_hat, out.feature_mask), masked_mse(var_tilde, var_hat, out.feature_mask)]
    return sum(terms) / 4


def reconstruction_loss(out) -> torch.Tensor:
    """L_recon = 1/2 (||A - A^||^2 + ||V - V^||^2) as mean squared error per valid token and feature."""
    per = [masked_token_mean(((out.recon[m].float() - out.inputs[m].float()) ** 2).mean(-1), out.feature_mask)
           for m in MODALITIES]
    return (per[0] + per[1]) / 2


def unimodal_loss(out, label: torch.Tensor, task: str) -> torch.Tensor:
    """L_uni: mean over a, v of the task criterion applied to the unimodal heads."""
    return sum(regression_loss(out.uni[m], label, task) for m in MODALITIES) / len(MODALITIES)


def renyi2_spectral_entropy(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per sample (B,): H_2 of the eigen-spectrum of the token covariance of x (B,L,d) over valid tokens."""
    x = x.float()
    w = mask.to(x.dtype).unsqueeze(-1)
    n = w.sum(1, keepdim=True).clamp_min(1.0)
    xc = (x - (x * w).sum(1, keepdim=True) / n) * w
    # the L x L Gram matrix has the same non-zero spectrum as the d x d covariance and is smaller (L=50 < d_f=512)
    gram = xc @ xc.transpose(1, 2)
    trace = gram.diagonal(dim1=1, dim2=2).sum(-1)
    frob2 = (gram ** 2).sum((1, 2))
    return 2 * torch.log(trace + eps) - torch.log(frob2 + eps ** 2)


def diversity_loss(out) -> torch.Tensor:
    """L_div = -mean over samples of the Renyi-2 spectral entropy of F_av (see module docstring)."""
    if out.fused is None:
        raise ValueError("diversity_loss: ModelOutput.fused (F_av) is missing")
    return -renyi2_spectral_entropy(out.fused, out.feature_mask).mean()


def _term(name: str, out, label, task: str) -> torch.Tensor:
    if name == "task":
        return regression_loss(out.prediction, label, task)
    if name == "recon":
        return reconstruction_loss(out)
    if name == "uni":
        return unimodal_loss(out, label, task)
    if name == "div":
        return diversity_loss(out)
    return statistical_loss(out)


def total_loss(out, label: torch.Tensor, loss: LossSection | Mapping, switches: Switches) -> dict[str, torch.Tensor]:
    """Eq. 4 with the run's ``loss`` section (cpsl.config.param_sections; a mapping is read as one). Returns
    {"total","task","recon","uni","div","stat"}; disabled terms are detached and left out of total."""
    loss = section(LossSection, loss)
    task = loss.task
    weights = {name: float(getattr(loss, key)) for name, (_, key) in _WEIGHTED.items()}
    losses = {"task": _term("task", out, label, task)}
    total = losses["task"]
    for name, (switch, _) in _WEIGHTED.items():
        if getattr(switches, switch):
            losses[name] = _term(name, out, label, task)
            total = total + weights[name] * losses[name]
        else:
            with torch.no_grad():
                losses[name] = _term(name, out, label, task)
    losses["total"] = total
    return {k: losses[k] for k in LOSS_TERMS}
