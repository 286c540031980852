"""MMIM's row and params section (torch-free): Han, Chen, Poria, "Improving Multimodal Fusion with Hierarchical
Mutual Information Maximization for Multimodal Sentiment Analysis", EMNLP 2021. The model is cpsl.baselines.mmim,
its estimators cpsl.baselines.mmim.estimators, its two-stage training cpsl.baselines.mmim.recipe;
docs/baselines.md has the equations, every source and every deviation."""
from __future__ import annotations

from cpsl.baselines.spec import BaselineSpec
from cpsl.config.param_types import BOOL, Spec, choice, number

SECTION = "mmim"
PAIRS = ("tv", "ta", "va")            # BA pairs x -> y: text->visual, text->acoustic, visual->acoustic
LLD_FORMS = ("gaussian", "official")  # log q(y|x): the Gaussian log-density | the official code's term
CPC_NEGATIVES = ("modality", "prediction")
STAGE1 = ("step", "epoch")            # stage 1 before every step on its batch | one pass before each epoch


def _pairs(value) -> bool:
    return bool(value) and len(set(value)) == len(value) and all(isinstance(p, str) and p in PAIRS for p in value)


# where each value of params.yaml's baselines.mmim section comes from: README.md in this folder
HYPER = {
    "acoustic_hidden": number(1, integer=True),
    "visual_hidden": number(1, integer=True),
    "acoustic_out": number(4, integer=True),  # the entropy projection keeps out // 4 >= 1 dimensions
    "visual_out": number(4, integer=True),
    "rnn_layers": number(1, integer=True),
    "rnn_bidirectional": BOOL,
    "rnn_dropout": number(0, 1, hi_open=True),
    "fusion_hidden": number(1, integer=True),
    "fusion_dropout": number(0, 1, hi_open=True),
    "cpc_layers": number(1, integer=True),
    "cpc_negatives": choice(*CPC_NEGATIVES),
    "ba_pairs": Spec((list,), _pairs, "a non-empty list of distinct pairs from " + ", ".join(PAIRS)),
    "lld_form": choice(*LLD_FORMS),
    "entropy_memory": number(1, integer=True),
    "cpc_weight": number(0),
    "ba_weight": number(0),
    "lr_estimator": number(0, 1, lo_open=True),
    "weight_decay_estimator": number(0),
    "stage1": choice(*STAGE1),
    "stage1_fraction": number(0, 1, lo_open=True),
    "lr_plateau_patience": number(0, integer=True),
    "lr_plateau_factor": number(0, 1, lo_open=True, hi_open=True),
}

SPEC = BaselineSpec(row="MMIM", section=SECTION, label="MMIM (Han et al., EMNLP 2021)",
                    paper_rows={"d": "MMIM (d)", "b": "MMIM (b)"}, hyper=HYPER)
