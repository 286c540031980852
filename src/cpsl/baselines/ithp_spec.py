"""ITHP's row and params section (torch-free): Xiao et al., "Neuro-Inspired Information-Theoretic Hierarchical
Perception for Multimodal Learning", ICLR 2024. The model is cpsl.baselines.ithp; docs/baselines.md has the
equations. The paper gives no hyper-parameter for CMU-MOSI/MOSEI: every value is the official code's default, the
same for both datasets (its README trains both with `python train.py --dataset mosi|mosei`)."""
from __future__ import annotations

from cpsl.baselines.spec import BaselineSpec
from cpsl.param_types import choice, number

SECTION = "ithp"
# official code = github.com/joshuaxiao98/ITHP (train.py, ITHP.py, deberta_ITHP.py)
# where each value of params.yaml's baselines.ithp section comes from (a comment: no code reads it)
# - b0_dim: official train.py --B0_dim 128 (width of the latent state B0)
# - b1_dim: official train.py --B1_dim 64 (width of the latent state B1)
# - inter_dim: official train.py --inter_dim 256 (hidden width of the encoder and predictor MLPs)
# - ib_dropout: official train.py --drop_prob 0.3 (dropout inside the ITHP MLPs)
# - output_dropout: official train.py --dropout_prob 0.5 (dropout after LayerNorm(X0 + beta_shift W_e B1))
# - beta_shift: official train.py --beta_shift 1.0 (weight of the expanded B1 added to the text states)
# - beta: official train.py --p_beta 8 (Lagrange multiplier of I(B0; X1); the paper gives values only for MUStARD)
# - gamma: official train.py --p_gamma 32 (Lagrange multiplier of I(B1; X2))
# - lambda: official train.py --p_lambda 0.3 (weight of L_IB1 in L_IB0 + lambda L_IB1)
# - alpha: official train.py: loss = MSE + 2 / (beta + gamma) * IB_total, i.e. alpha = 1 (its --IB_coef 10 is never
#   read)
# - target_scaling: official train.py: (x - x.min()) / (x.max() - x.min()) over each batch tensor
# - dim_reduction: official ITHP.py: torch.mean over the latent dimension (KL) and nn.MSELoss (mean)
# - loss_positions: official ITHP.py: the terms average over all max_seq_length positions
# - train.epochs: official train.py --n_epochs 30
# - train.batch_size: official train.py --train_batch_size 8
# - train.lr: official train.py --learning_rate 1e-5, one rate for every parameter (lr_new_modules: null)
# - train.weight_decay: official train.py AdamW groups: 0.01, and 0 on biases and LayerNorm weights
# - train.warmup_ratio: official train.py --warmup_proportion 0.1 (get_linear_schedule_with_warmup)
# - train.grad_clip: official train.py: no clipping
HYPER = {
    "b0_dim": number(1, integer=True),
    "b1_dim": number(1, integer=True),
    "inter_dim": number(1, integer=True),
    "ib_dropout": number(0, 1, hi_open=True),
    "output_dropout": number(0, 1, hi_open=True),
    "beta_shift": number(0),
    "beta": number(0, lo_open=True),
    "gamma": number(0, lo_open=True),
    "lambda": number(0),
    "alpha": number(0),
    "target_scaling": choice("batch_global", "batch_per_feature"),
    "dim_reduction": choice("mean", "sum"),
    "loss_positions": choice("all", "words"),
}


SPEC = BaselineSpec(row="ITHP", section=SECTION, label="ITHP (Xiao et al., ICLR 2024)", paper_rows={"d": "ITHP"},
                    hyper=HYPER, reads_av_at_inference=False,
                    av_note="ITHP's prediction reads the text only: the acoustic/visual streams are training targets "
                            "of its bottleneck (learnt through the KL and reconstruction terms, not the prediction)")
