"""MMIM's mutual-information estimators (Han, Chen, Poria, EMNLP 2021), one equation per function.

Inter-modality level: the Barber-Agakov (BA) lower bound for a modality pair x -> y
    I(X;Y) >= E_p(x,y)[log q(y|x)] + H(Y) = I_BA,           q(y|x) = N(y | mu(x), diag sigma^2(x))
    log q(y|x) = -1/2 sum_j [ (y_j - mu_j)^2 / sigma_j^2 + log sigma_j^2 + log 2 pi ]     (``gaussian_log_likelihood``)
  mu(x) and log sigma^2(x) come from two MLPs (``ConditionalGaussian``); E[log q] is "lld".
  H(Y): p(y) is taken as a two-component Gaussian mixture (positive and negative segments); dropping constants
  and with equal weights the paper's estimate is
    H(Y) ~= 1/4 ( log det Sigma_pos + log det Sigma_neg )                                   (``mixture_entropy``)
  with the covariances estimated from the current batch plus a memory of the previous ones (``EntropyMemory``).

Fusion level: the CPC (InfoNCE) bound between the fusion result Z and each modality representation h_m
    s(h_m, Z) = < h_m / |h_m| , G(Z) / |G(Z)| >          (G: ``CPCPredictor``, both sides unit-normalised)
    L_N(Z, H_m) = -1/B sum_i log [ exp s(h_m^i, Z^i) / sum_j exp s(h_m^j, Z^i) ]           (``info_nce``)
    I_CPC = log B - L_N <= log B.

Choices (facts from the official code declare-lab/Multimodal-Infomax where the paper is silent; see
docs/baselines.md):
- ``lld_form``: "gaussian" (default) is the Gaussian log-likelihood above, the one that makes I_BA a bound and
  makes maximising lld fit sigma. "official" is the official code's -(y - mu)^2 / (2 sigma^2) without the
  log sigma^2 and 2 pi terms (maximising it pushes sigma to infinity; kept for users who want the code's term).
- The entropy is computed on a projection of y, Linear(d_y, d_y // 4) + tanh, as in the official code: with 16-dim
  representations and batch 32 the covariance of y itself would be singular. In the official code that layer
  sits in the estimator's parameter group, which only stage 1 updates and stage 1 never uses it, so it keeps its
  initial weights; here it is frozen (requires_grad False), which is the same and says so.
- Segments with label 0 belong to neither component (the official code splits on label > 0 and label < 0).
  A component with no more samples than dimensions has a singular covariance: the estimate is 0 then (the
  official code would take log det of a singular matrix). Every covariance gets a ridge of 1e-6 on its diagonal
  (``COVARIANCE_RIDGE``), so that samples that coincide give a finite estimate (the official code: -inf, NaN).
- ``cpc_negatives``: "modality" (default, the equation above: for each fusion result the other segments'
  modality vectors are the negatives) or "prediction" (the official code: for each modality vector the other
  segments' predictions G(Z_j) are). Both are InfoNCE bounds <= log B.
"""
from __future__ import annotations

import math
from collections import deque

import torch
import torch.nn.functional as F
from torch import nn

from cpsl.baselines.mmim.spec import CPC_NEGATIVES, LLD_FORMS

_LOG_2PI = math.log(2 * math.pi)
# added to every covariance of the entropy estimate: a batch whose projected samples coincide (e.g. all-zero a/v
# features) has a zero covariance, whose log det is -inf; with the ridge it is k log 1e-6 and its gradient 0
COVARIANCE_RIDGE = 1e-6


def gaussian_log_likelihood(mu: torch.Tensor, logvar: torch.Tensor, y: torch.Tensor,
                            form: str = "gaussian") -> torch.Tensor:
    """E_batch[log q(y|x)] for q = N(mu, diag exp(logvar)): summed over dimensions, averaged over the batch."""
    if form == "gaussian":
        per_dim = -0.5 * ((y - mu) ** 2 / logvar.exp() + logvar + _LOG_2PI)
    elif form == "official":
        per_dim = -0.5 * (y - mu) ** 2 / logvar.exp()
    else:
        raise ValueError(f"mmim lld_form: unknown form {form!r}; expected one of {', '.join(LLD_FORMS)}")
    return per_dim.sum(-1).mean()


class ConditionalGaussian(nn.Module):
    """q(y|x) of the BA bound: mu(x) and log sigma^2(x), each Linear(d_x, d_y) -> ReLU -> Linear(d_y, d_y)
    (official code: hidden width d_y, ReLU; its unused last activation is left out)."""

    def __init__(self, x_dim: int, y_dim: int):
        super().__init__()
        self.mu = nn.Sequential(nn.Linear(x_dim, y_dim), nn.ReLU(), nn.Linear(y_dim, y_dim))
        self.logvar = nn.Sequential(nn.Linear(x_dim, y_dim), nn.ReLU(), nn.Linear(y_dim, y_dim))

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor, form: str = "gaussian") -> torch.Tensor:
        return gaussian_log_likelihood(self.mu(x), self.logvar(x), y, form)


def _log_det_covariance(x: torch.Tensor, member: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log det of the maximum-likelihood covariance (1/n) of the rows of x (N, k) where ``member`` (N,) is true, and
    whether it is defined (more rows than dimensions). Weights instead of indexing: no data-dependent shape, so
    no host synchronisation; a singular case takes log det of the identity (0) so that no NaN gradient leaks."""
    w = member.to(x.dtype).unsqueeze(-1)
    n = w.sum()
    centred = (x - (w * x).sum(0) / n.clamp_min(1)) * w
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    cov = centred.T @ centred / n.clamp_min(1) + COVARIANCE_RIDGE * eye
    defined = n > x.shape[-1]
    return torch.logdet(torch.where(defined, cov, eye)), defined


def mixture_entropy(features: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """H(Y) ~= 1/4 (log det Sigma_pos + log det Sigma_neg) over the positive (label > 0) and negative (label < 0)
    rows of ``features`` (N, k); neutral rows (label 0) belong to neither. 0 when either component has no more
    rows than dimensions (its covariance would be singular)."""
    label = label.reshape(-1)
    log_det_pos, pos_defined = _log_det_covariance(features.float(), label > 0)
    log_det_neg, neg_defined = _log_det_covariance(features.float(), label < 0)
    return torch.where(pos_defined & neg_defined, 0.25 * (log_det_pos + log_det_neg), torch.zeros_like(log_det_pos))


class EntropyProjection(nn.Module):
    """Linear(d_y, d_y // 4) + tanh before the entropy estimate; frozen at its initial weights (module docstring)."""

    def __init__(self, y_dim: int):
        super().__init__()
        if y_dim < 4:
            raise ValueError(f"mmim: the entropy projection needs a representation of at least 4 dims, got {y_dim}")
        self.net = nn.Sequential(nn.Linear(y_dim, y_dim // 4), nn.Tanh())
        self.net.requires_grad_(False)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


class EntropyMemory:
    """The projected samples (and labels) of the last ``size`` training batches, per modality pair.

    The covariances of H(Y) are estimated from this memory plus the current batch (the current batch keeps its
    gradient, the memory is detached). The official code empties it at the start of every epoch and uses H only
    once it is full; ``state_dict``/``load_state_dict`` let a resumed run continue with the same memory.
    """

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"mmim entropy_memory: must be >= 1 batch, got {size}")
        self.size = size
        self.batches: dict[str, deque] = {}

    def reset(self) -> None:
        self.batches = {}

    def full(self, pair: str) -> bool:
        return len(self.batches.get(pair, ())) == self.size

    def history(self, pair: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(features, labels) of the remembered batches, or None until the memory is full."""
        if not self.full(pair):
            return None
        features, labels = zip(*self.batches[pair])
        return torch.cat(features), torch.cat(labels)

    def push(self, pair: str, features: torch.Tensor, label: torch.Tensor) -> None:
        """Remember one batch's projected samples (detached), dropping the oldest batch once full."""
        entry = (features.detach().float(), label.detach().float().reshape(-1))
        self.batches.setdefault(pair, deque(maxlen=self.size)).append(entry)

    def state_dict(self) -> dict:
        return {"size": self.size,
                "batches": {pair: [[f.cpu(), y.cpu()] for f, y in q] for pair, q in self.batches.items()}}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        if state["size"] != self.size:
            raise ValueError(f"mmim entropy_memory: saved state holds {state['size']} batches, this run {self.size}")
        self.batches = {pair: deque([(f.to(device), y.to(device)) for f, y in q], maxlen=self.size)
                        for pair, q in state["batches"].items()}


class CPCPredictor(nn.Module):
    """G(Z): predicts a modality representation from the fusion result. One layer: Linear(d_z, d_m) (official
    default); more layers: Linear(d_z, d_m) -> activation -> Linear(d_m, d_m) ... (official code's tanh)."""

    def __init__(self, z_dim: int, m_dim: int, layers: int = 1):
        super().__init__()
        if layers < 1:
            raise ValueError(f"mmim cpc_layers: must be >= 1, got {layers}")
        net: list[nn.Module] = [nn.Linear(z_dim, m_dim)]
        for _ in range(layers - 1):
            net += [nn.Tanh(), nn.Linear(m_dim, m_dim)]
        self.net = nn.Sequential(*net)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def info_nce(target: torch.Tensor, prediction: torch.Tensor, negatives: str = "modality") -> torch.Tensor:
    """L_N of the CPC bound for targets h_m (B, d) and predictions G(Z) (B, d); I_CPC = log B - L_N."""
    target, prediction = F.normalize(target, dim=-1), F.normalize(prediction, dim=-1)
    scores = target @ prediction.T  # scores[j, i] = s(h_m^j, Z^i)
    if negatives == "modality":
        normaliser = torch.logsumexp(scores, dim=0)  # over h_m^j for each Z^i
    elif negatives == "prediction":
        normaliser = torch.logsumexp(scores, dim=1)  # over G(Z^j) for each h_m^i (official code)
    else:
        raise ValueError(f"mmim cpc_negatives: unknown value {negatives!r}; expected one of "
                         f"{', '.join(CPC_NEGATIVES)}")
    return -(scores.diagonal() - normaliser).mean()
