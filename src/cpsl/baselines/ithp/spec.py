"""ITHP's row and params section (torch-free): Xiao et al., "Neuro-Inspired Information-Theoretic Hierarchical
Perception for Multimodal Learning", ICLR 2024. The model is cpsl.baselines.ithp; docs/baselines.md has the
equations. The paper gives no hyper-parameter for CMU-MOSI/MOSEI: every value is the official code's default, the
same for both datasets (its README trains both with `python train.py --dataset mosi|mosei`)."""
from __future__ import annotations

from cpsl.baselines.spec import BaselineSpec
from cpsl.config.param_types import choice, number

SECTION = "ithp"
# where each value of params.yaml's baselines.ithp section comes from: README.md in this folder
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
