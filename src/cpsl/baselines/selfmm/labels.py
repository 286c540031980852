"""Self-MM's Unimodal Label Generation Module (ULGM; Yu et al., AAAI 2021, Section "ULGM", Eq. 5-12, Algorithm 1).

The ULGM has no parameters: it keeps per-segment state over the whole training set and turns the multimodal label
y_m into one generated label y_s per unimodal subtask s in {t, a, v}. State (buffers, so ``state_dict`` carries it
and a training run can checkpoint and resume it):

- ``labels`` (4, N): row m = y_m (fixed), rows t, a, v = the current unimodal labels y_s^(i) of every segment;
- ``features_<i>`` (N, d_i) for i in {m, t, a, v}: the stored ("global") representations F_i^g, the F_i^* of each
  segment from the last step that saw it.

Equations (paper numbering; N training segments, i in {m, t, a, v}, s in {t, a, v}):

    C_i^p = sum_j I(y_i(j) > 0) F_ij^g / sum_j I(y_i(j) > 0)                        (5)   ``centres``
    C_i^n = sum_j I(y_i(j) < 0) F_ij^g / sum_j I(y_i(j) < 0)                        (6)   ``centres``
    D_i^p = ||F_i^* - C_i^p||_2^2 / sqrt(d_i),  D_i^n likewise                      (7)   ``distance``
    alpha_i = (D_i^n - D_i^p) / (D_i^p + eps)                                        (8)   ``relative_distance``
    y_s = y_m * alpha_s / alpha_m                                                    (9)
    y_s = y_m + alpha_s - alpha_m                                                   (10)
    y_s = (9 + 10) / 2 = y_m + (alpha_s - alpha_m) / 2 * (y_m + alpha_m) / alpha_m  (11)   ``generate``
    y_s^(1) = y_m;  y_s^(i) = (i-1)/(i+1) y_s^(i-1) + 2/(i+1) y_s^i  for i > 1     (12)   ``update``

Algorithm 1 (per mini-batch, after the loss of the step was computed with the labels as they were): from epoch
i = 2 on, Eq. 5-8 on the batch's representations F_i^* give y_s (Eq. 11) and the momentum update (Eq. 12); then, in
every epoch, the batch's F_i^* replace the stored F_i^g. The centres always come from the state before the step,
so the update of a batch does not depend on the order of its segments (what makes the DDP all-gather exact).

Choices and deviations (also in docs/baselines.md):
- ``rule``: "paper" (default) is Eq. 5-8 as printed. "official" is what thuiar/Self-MM (trains/SELF_MM.py) does:
  a label of exactly 0 counts as positive (``>= 0``) in Eq. 5, and the distance is the plain L2 norm
  ||F - C||_2 (no square, no 1/sqrt(d)).
- Every generated label is clipped to [-H, H] (``bound``; H = 3 in the official code, the label range of MOSI and
  MOSEI; the paper does not clip). Eq. 11 divides by alpha_m: with |alpha_m| < eps the division uses +-eps (same
  sign), where the official code adds eps (which still divides by zero at alpha_m = -eps).
- An empty class (no segment with a positive, or a negative, label) has the zero vector as its centre (Eq. 5-6
  are 0/0 there; the official code gives NaN).
- eps = 1e-8 (official ``MIN``; the paper: "a small number in case of zero exceptions").
- ``epoch`` arguments are 0-based as in cpsl.train.loop; the paper's i is ``epoch + 1``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

REPRESENTATIONS = ("m", "t", "a", "v")  # multimodal, then the three unimodal subtasks (paper's order)
SUBTASKS = ("t", "a", "v")
RULES = ("paper", "official")
EPS = 1e-8  # official trains/SELF_MM.py MIN


class UnimodalLabels(nn.Module):
    def __init__(self, n_segments: int, dims: dict[str, int], rule: str = "paper", bound: float = 3.0):
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"ulgm_rule: unknown rule {rule!r}; expected one of {', '.join(RULES)}")
        if n_segments < 1:
            raise ValueError(f"UnimodalLabels: needs at least one training segment, got {n_segments}")
        missing = [i for i in REPRESENTATIONS if i not in dims]
        if missing:
            raise ValueError(f"UnimodalLabels: no representation width for {missing}")
        self.rule, self.bound, self.dims = rule, float(bound), {i: int(dims[i]) for i in REPRESENTATIONS}
        self.register_buffer("labels", torch.zeros(len(REPRESENTATIONS), n_segments))
        for i in REPRESENTATIONS:
            self.register_buffer(f"features_{i}", torch.zeros(n_segments, self.dims[i]))

    @property
    def n_segments(self) -> int:
        return self.labels.shape[1]

    def stored(self, i: str) -> torch.Tensor:
        return getattr(self, f"features_{i}")

    def row(self, i: str) -> int:
        return REPRESENTATIONS.index(i)

    # ------------------------------------------------------------------------------------------- Algorithm 1
    @torch.no_grad()
    def init_labels(self, y_m: torch.Tensor) -> None:
        """Algorithm 1, lines 2-3: every label row = y_m (the training labels, in segment order); F^g = 0."""
        y_m = y_m.reshape(-1).to(self.labels)
        if y_m.numel() != self.n_segments:
            raise ValueError(f"UnimodalLabels.init_labels: {y_m.numel()} labels for {self.n_segments} segments")
        self.labels.copy_(y_m.expand_as(self.labels))
        for i in REPRESENTATIONS:
            self.stored(i).zero_()

    def targets(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The current labels of the segments ``index``: {"m": y_m, "t"/"a"/"v": y_s^(i)}, each (B,)."""
        return {i: self.labels[self.row(i)].index_select(0, index) for i in REPRESENTATIONS}

    @torch.no_grad()
    def update(self, index: torch.Tensor, features: dict[str, torch.Tensor], epoch: int) -> None:
        """Algorithm 1, lines 10-15, for the segments ``index`` (B,) with representations F_i^* (B, d_i).
        The caller passes every rank's batch (all-gathered) so that the state stays identical on every rank."""
        # a segment twice in one (all-gathered) batch -- DistributedSampler pads the last batches by repeating
        # segments -- is written from its first occurrence only: identical writes, so no order dependence
        first = (index[:, None] == index[None, :]).to(torch.int8).argmax(1)
        features = {i: features[i].detach().to(self.labels).index_select(0, first) for i in REPRESENTATIONS}
        if epoch >= 1:  # the paper's i > 1
            generated = self.generate(index, features)
            n = epoch + 1
            for s in SUBTASKS:
                old = self.labels[self.row(s)].index_select(0, index)
                self.labels[self.row(s)].index_copy_(0, index, momentum(old, generated[s], n))
        for i in REPRESENTATIONS:
            self.stored(i).index_copy_(0, index, features[i])

    # ------------------------------------------------------------------------------------------- Eq. 5-11
    def centres(self, i: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 5-6: (C_i^p, C_i^n) over the stored representations, by the sign of the labels of row i."""
        y, f = self.labels[self.row(i)], self.stored(i)
        positive = (y >= 0) if self.rule == "official" else (y > 0)
        negative = y < 0
        return _class_mean(f, positive), _class_mean(f, negative)

    def distance(self, f: torch.Tensor, centre: torch.Tensor, i: str) -> torch.Tensor:
        """Eq. 7: ||F - C||_2^2 / sqrt(d_i) per row of f (B, d_i); "official": ||F - C||_2."""
        if self.rule == "official":
            return torch.linalg.vector_norm(f - centre, dim=-1)
        return ((f - centre) ** 2).sum(-1) / math.sqrt(self.dims[i])

    def relative_distance(self, f: torch.Tensor, i: str) -> torch.Tensor:
        """Eq. 8: alpha_i (B,) of the representations f (B, d_i) of modality i."""
        c_pos, c_neg = self.centres(i)
        d_pos, d_neg = self.distance(f, c_pos, i), self.distance(f, c_neg, i)
        return (d_neg - d_pos) / (d_pos + EPS)

    def generate(self, index: torch.Tensor, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Eq. 11 (clipped to [-H, H]): the new labels y_s of the segments ``index`` from their F_i^*."""
        y_m = self.labels[self.row("m")].index_select(0, index)
        alpha_m = _away_from_zero(self.relative_distance(features["m"].to(self.labels), "m"))
        out = {}
        for s in SUBTASKS:
            alpha_s = self.relative_distance(features[s].to(self.labels), s)
            y_s = y_m + (alpha_s - alpha_m) / 2 * (y_m + alpha_m) / alpha_m
            out[s] = y_s.clamp(-self.bound, self.bound)
        return out


def momentum(previous: torch.Tensor, generated: torch.Tensor, n: int) -> torch.Tensor:
    """Eq. 12 at the paper's epoch n > 1: (n-1)/(n+1) y^(n-1) + 2/(n+1) y^n."""
    return (n - 1) / (n + 1) * previous + 2 / (n + 1) * generated


def _class_mean(f: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    w = member.to(f.dtype)
    return (w[:, None] * f).sum(0) / w.sum().clamp_min(1.0)


def _away_from_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x.clamp_min(EPS), x.clamp_max(-EPS))
