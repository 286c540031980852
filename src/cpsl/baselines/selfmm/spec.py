"""Self-MM's row and params section (torch-free): Yu, Xu, Yuan, Wu, "Learning Modality-Specific Representations with
Self-Supervised Multi-Task Learning for Multimodal Sentiment Analysis", AAAI 2021. The model is cpsl.baselines.selfmm,
its label generation cpsl.baselines.selfmm.labels, its training recipe cpsl.baselines.selfmm.recipe;
docs/baselines.md has the equations."""
from __future__ import annotations

from cpsl.baselines.spec import BaselineSpec
from cpsl.config.param_types import choice, number

SECTION = "selfmm"
# where each value of params.yaml's baselines.selfmm section comes from: README.md in this folder
POSITIVE_INT = number(1, integer=True)
RATE = number(0, 1, hi_open=True)
HYPER = {
    "a_lstm_hidden": POSITIVE_INT,
    "v_lstm_hidden": POSITIVE_INT,
    "a_lstm_layers": POSITIVE_INT,
    "v_lstm_layers": POSITIVE_INT,
    "a_lstm_dropout": RATE,
    "v_lstm_dropout": RATE,
    "a_out": POSITIVE_INT,
    "v_out": POSITIVE_INT,
    "post_m_dim": POSITIVE_INT,
    "post_t_dim": POSITIVE_INT,
    "post_a_dim": POSITIVE_INT,
    "post_v_dim": POSITIVE_INT,
    "post_m_dropout": RATE,
    "post_t_dropout": RATE,
    "post_a_dropout": RATE,
    "post_v_dropout": RATE,
    "head_hidden_layers": number(1, 2, integer=True),
    "ulgm_rule": choice("paper", "official"),
    "label_bound": number(0, lo_open=True),
    "lr_a": number(0, lo_open=True),
    "lr_v": number(0, lo_open=True),
    "wd_a": number(0),
    "wd_v": number(0),
    "wd_other": number(0),
}

SPEC = BaselineSpec(row="SELFMM", section=SECTION, label="Self-MM (Yu et al., AAAI 2021)",
                    paper_rows={"d": "Self-MM (d)", "b": "Self-MM (b)"}, hyper=HYPER)
