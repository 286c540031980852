"""ITHP: Information-Theoretic Hierarchical Perception (Xiao et al., ICLR 2024) on a DeBERTa text encoder.

The hierarchy for CMU-MOSI/MOSEI (paper, sentiment experiments): the prime modality X0 is the text, then the
acoustic X1, then the visual X2. Two Gaussian latent states with reparameterisation:

    B0 ~ p(B0 | X0) = N(mu0(X0), diag exp(logvar0(X0))),   B1 ~ p(B1 | B0) = N(mu1(B0), diag exp(logvar1(B0)))
    b  = mu + eps (.) exp(logvar / 2),  eps ~ N(0, I)                                   (``reparameterise``)

and the two information bottlenecks, with the variational bounds of the paper (KL against the standard normal
prior r(B) = N(0, I); the relevance term is a prediction loss of the next modality from the latent):

    L_IB0 = I(X0; B0) - beta  I(B0; X1)  ~  KL(p(B0|X0) || N(0,I)) + beta  * E ||X1 - q(B0)||^2      (``ib0``)
    L_IB1 = I(B0; B1) - gamma I(B1; X2)  ~  KL(p(B1|B0) || N(0,I)) + gamma * E ||X2 - q(B1)||^2      (``ib1``)
    L_ITHP = L_IB0 + lambda L_IB1                                                                    (``ib``)
    L = L_task + alpha * 2 / (beta + gamma) * L_ITHP,   L_task = MSE(prediction, label)             (``total``)

How ITHP is combined with DeBERTa ("ITHP-DeBERTa"; as the official code's deberta_ITHP.py does it): X0 is
the encoder's last hidden state, ITHP runs on every token, and its output B1 is expanded back to the text
width and added to the text states before the head:

    H = Dropout_p(LayerNorm(X0 + beta_shift * W_e B1)),   prediction = W_c Dropout(tanh(W_p H[CLS]))

So the acoustic and visual streams are never an INPUT of the prediction: they are only the targets of the
two prediction terms. They shape the model through training (the gradients of L_IB0/L_IB1 reach the shared
text encoder and the bottlenecks), and at inference the model reads the text alone: d prediction / d (a, v)
is exactly zero and zeroing a/v at test time changes nothing (see docs/baselines.md).

Choices taken from the official code (joshuaxiao98/ITHP; params in cpsl.baselines.ithp.spec), and our deviations:
- Sizes: X0 -> Linear(d_t, inter_dim) -> ReLU -> Dropout -> Linear(inter_dim, 2 b0_dim) = (mu0, logvar0);
  B0 -> Linear(b0_dim, inter_dim) -> ReLU -> Dropout -> Linear(inter_dim, d_a) -> Sigmoid -> Dropout = X1 hat;
  the same shapes for B0 -> B1 (b1_dim) -> X2 hat (d_v). The sigmoid output needs targets in [0, 1]:
- ``target_scaling``: "batch_global" (official): a/v min-max normalised with the min and max of the whole
  (B, L, d) batch tensor, padding zeros included; "batch_per_feature": per feature over word positions
  (cpsl.nn.normalize, the CP+SL paper's normalisation). Under DDP the training statistics are all-reduced
  so that 2 ranks x 4 segments see the targets of 1 process x 8. Predictions never depend on them.
- ``dim_reduction``: "mean" (official): the KL terms are the MEAN over latent dimensions and the prediction
  terms the mean over feature dimensions; "sum": the KL divergence and squared error summed over dimensions,
  as the equations read literally. "mean" is the paper's Lagrangian with rescaled multipliers; the official
  beta, gamma, lambda were chosen with it.
- ``loss_positions``: "all" (official): KL and prediction terms average over all L positions, [CLS], [SEP]
  and padding included; "words": over word positions only.
- New layers are initialised as transformers' ``init_weights`` does in the official model: normal(0,
  config.initializer_range) weights, zero biases. The head is BERT's pooler (dense + tanh on [CLS]) -> Dropout
  (the text encoder's ``hidden_dropout_prob``, as the official classifier's) -> Linear (PoolerRegressionHead).
- Deviation: the text encoder gets the attention mask (the official code calls DeBERTa without one, so its
  states attend to padding).
- Deviation: in eval mode B0 = mu0 and B1 = mu1 (no sampling): the official code samples at test time, which
  makes a prediction random; our protocol needs deterministic, batch-independent evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from cpsl.nn.heads import PoolerRegressionHead
from cpsl.nn.losses import masked_token_mean, regression_loss
from cpsl.nn.normalize import minmax_normalize
from cpsl.nn.tokens import trimmed_length, word_positions

TARGET_SCALINGS = ("batch_global", "batch_per_feature")
DIM_REDUCTIONS = ("mean", "sum")
LOSS_POSITIONS = ("all", "words")
# the named terms of the objective, in the order of the equations; "total" is what is backpropagated
LOSS_TERMS = ("total", "task", "kl_b0", "pred_acoustic", "kl_b1", "pred_visual", "ib")


def _hp(hp: dict, key: str, choices: tuple[str, ...] | None = None):
    if key not in hp:
        raise KeyError(f"ITHP: hyper-parameters are missing {key!r}")
    value = hp[key]
    if choices is not None and value not in choices:
        raise ValueError(f"ITHP: {key} must be one of {', '.join(choices)}, got {value!r}")
    return value


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor, sample: bool) -> torch.Tensor:
    """b = mu + eps * exp(logvar / 2), eps ~ N(0, I) from torch's global RNG (resumable); mu when not sampling."""
    if not sample:
        return mu
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per dimension KL(N(mu, exp(logvar)) || N(0, 1)) = -1/2 (1 + logvar - mu^2 - exp(logvar)), same shape."""
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


class GaussianBottleneck(nn.Module):
    """One level of the hierarchy: source (B,L,d_in) -> (mu, logvar, b) (B,L,latent) -> prediction (B,L,d_target)
    of the next modality from b."""

    def __init__(self, input_dim: int, latent_dim: int, target_dim: int, inter_dim: int, dropout: float):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(input_dim, inter_dim), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(inter_dim, 2 * latent_dim))
        self.predictor = nn.Sequential(nn.Linear(latent_dim, inter_dim), nn.ReLU(), nn.Dropout(dropout),
                                       nn.Linear(inter_dim, target_dim), nn.Sigmoid(), nn.Dropout(dropout))

    def forward(self, source: torch.Tensor, sample: bool):
        mu, logvar = self.encoder(source).chunk(2, dim=-1)
        b = reparameterise(mu, logvar, sample)
        return mu, logvar, b, self.predictor(b)


@dataclass
class ITHPOutput:
    prediction: torch.Tensor       # (B,)
    mu0: torch.Tensor              # (B,L,b0_dim) posterior of B0 given the text
    logvar0: torch.Tensor
    mu1: torch.Tensor              # (B,L,b1_dim) posterior of B1 given B0
    logvar1: torch.Tensor
    acoustic_hat: torch.Tensor     # (B,L,d_a) X1 predicted from B0
    visual_hat: torch.Tensor       # (B,L,d_v) X2 predicted from B1
    acoustic_target: torch.Tensor  # (B,L,d_a) X1 scaled to [0, 1] (affine in the raw input, see scale_targets)
    visual_target: torch.Tensor    # (B,L,d_v)
    loss_mask: torch.Tensor        # (B,L) bool: the positions the KL and prediction terms average over


def _distributed_training(module: nn.Module) -> bool:
    return module.training and dist.is_available() and dist.is_initialized()


def scale_targets(x: torch.Tensor, mask: torch.Tensor, how: str, sync: bool) -> torch.Tensor:
    """a/v (B,L,d) -> [0, 1] targets of the prediction terms (``target_scaling``, module docstring). The min and
    max are data statistics (no gradient); the targets are affine in x, so d loss / d (a, v) exists."""
    if how == "batch_per_feature":
        return minmax_normalize(x, word_positions(mask), sync)
    x = x.float()
    with torch.no_grad():
        lo, hi = x.amin().reshape(1), x.amax().reshape(1)
        if sync:
            dist.all_reduce(lo, op=dist.ReduceOp.MIN)
            dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, 1), torch.zeros((), device=x.device))


class ITHPModel(nn.Module):
    """ITHP-DeBERTa: the text encoder's states X0 -> B0 (predicts acoustic) -> B1 (predicts visual) -> added to X0."""

    def __init__(self, text_encoder: nn.Module, acoustic_dim: int, visual_dim: int, hp: dict):
        super().__init__()
        config = text_encoder.config
        text_dim = config.hidden_size
        b0_dim, b1_dim, inter_dim = (int(_hp(hp, k)) for k in ("b0_dim", "b1_dim", "inter_dim"))
        ib_dropout = float(_hp(hp, "ib_dropout"))
        self.text_encoder = text_encoder
        self.level0 = GaussianBottleneck(text_dim, b0_dim, acoustic_dim, inter_dim, ib_dropout)  # X0 -> B0 -> X1
        self.level1 = GaussianBottleneck(b0_dim, b1_dim, visual_dim, inter_dim, ib_dropout)  # B0 -> B1 -> X2
        self.expand = nn.Linear(b1_dim, text_dim)
        self.norm = nn.LayerNorm(text_dim)
        self.dropout = nn.Dropout(float(_hp(hp, "output_dropout")))
        self.head = PoolerRegressionHead(text_dim, float(getattr(config, "hidden_dropout_prob", 0.1)), "cls")
        self.beta_shift = float(_hp(hp, "beta_shift"))
        self.target_scaling = _hp(hp, "target_scaling", TARGET_SCALINGS)
        self.loss_positions = _hp(hp, "loss_positions", LOSS_POSITIONS)
        self.dims = {"acoustic": acoustic_dim, "visual": visual_dim}
        # drop trailing all-padding positions (a host read; the training step turns this off on a GPU): only with
        # loss_positions "words", where padding is in no term ("all" averages over every position, as the code)
        self.trim_padding = True
        std = float(getattr(config, "initializer_range", 0.02))
        for layer in (self.level0, self.level1, self.expand, self.head):
            for module in layer.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, 0.0, std)
                    nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, acoustic: torch.Tensor,
                visual: torch.Tensor) -> ITHPOutput:
        mask = attention_mask.bool()
        for name, x in (("acoustic", acoustic), ("visual", visual)):
            if x.dim() != 3 or x.shape[:2] != mask.shape or x.shape[-1] != self.dims[name]:
                raise ValueError(f"ITHPModel: {name} must be (B,L,{self.dims[name]}) matching attention_mask "
                                 f"{tuple(mask.shape)}, got {tuple(x.shape)}")
        keep = trimmed_length(mask) if self.trim_padding and self.loss_positions == "words" else None
        if keep is not None:  # per-token or masked ops only: valid outputs change by float round-off at most
            input_ids, attention_mask, mask = input_ids[:, :keep], attention_mask[:, :keep], mask[:, :keep]
            acoustic, visual = acoustic[:, :keep], visual[:, :keep]
        x0 = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mu0, logvar0, b0, acoustic_hat = self.level0(x0, self.training)
        mu1, logvar1, b1, visual_hat = self.level1(b0, self.training)
        h = self.dropout(self.norm(x0 + self.beta_shift * self.expand(b1)))
        prediction = self.head(h, mask)
        sync = _distributed_training(self)
        return ITHPOutput(
            prediction=prediction, mu0=mu0, logvar0=logvar0, mu1=mu1, logvar1=logvar1,
            acoustic_hat=acoustic_hat, visual_hat=visual_hat,
            acoustic_target=scale_targets(acoustic, mask, self.target_scaling, sync),
            visual_target=scale_targets(visual, mask, self.target_scaling, sync),
            loss_mask=torch.ones_like(mask) if self.loss_positions == "all" else word_positions(mask),
        )


def _per_position(x: torch.Tensor, how: str) -> torch.Tensor:
    """(B,L,d) -> (B,L): mean or sum over the last dimension (``dim_reduction``)."""
    return x.mean(-1) if how == "mean" else x.sum(-1)


def ithp_losses(out: ITHPOutput, label: torch.Tensor, hp: dict) -> dict[str, torch.Tensor]:
    """The objective (module docstring): {"total", "task", "kl_b0", "pred_acoustic", "kl_b1", "pred_visual", "ib"}."""
    beta, gamma, lam, alpha = (float(_hp(hp, k)) for k in ("beta", "gamma", "lambda", "alpha"))
    how = _hp(hp, "dim_reduction", DIM_REDUCTIONS)
    if beta + gamma <= 0:
        raise ValueError(f"ITHP: beta + gamma must be positive (the objective divides by it), got {beta + gamma}")
    mask = out.loss_mask

    def position_mean(per_dim: torch.Tensor) -> torch.Tensor:
        return masked_token_mean(_per_position(per_dim, how), mask)

    terms = {
        "task": regression_loss(out.prediction, label, "mse"),
        "kl_b0": position_mean(kl_standard_normal(out.mu0, out.logvar0)),
        "pred_acoustic": position_mean((out.acoustic_hat.float() - out.acoustic_target) ** 2),
        "kl_b1": position_mean(kl_standard_normal(out.mu1, out.logvar1)),
        "pred_visual": position_mean((out.visual_hat.float() - out.visual_target) ** 2),
    }
    ib0 = terms["kl_b0"] + beta * terms["pred_acoustic"]
    ib1 = terms["kl_b1"] + gamma * terms["pred_visual"]
    terms["ib"] = ib0 + lam * ib1
    terms["total"] = terms["task"] + alpha * 2.0 / (beta + gamma) * terms["ib"]
    return {k: terms[k] for k in LOSS_TERMS}


# what cpsl.nn.zoo builds and trains for this baseline's row (looked up by name: cpsl.baselines.registry)
MODEL = ITHPModel
LOSSES = ithp_losses
