"""Self-MM's row and params section (torch-free): Yu, Xu, Yuan, Wu, "Learning Modality-Specific Representations with
Self-Supervised Multi-Task Learning for Multimodal Sentiment Analysis", AAAI 2021. The model is cpsl.baselines.selfmm,
its label generation cpsl.baselines.selfmm_labels, its training recipe cpsl.baselines.selfmm_training;
docs/baselines.md has the equations."""
from __future__ import annotations

from cpsl.baselines.spec import BaselineSpec
from cpsl.param_types import choice, number

SECTION = "selfmm"
# official code = github.com/thuiar/Self-MM: config/config_regression.py (per dataset), models/SELF_MM.py,
# trains/SELF_MM.py. Its optimiser sums the gradients of update_epochs = 4 mini-batches of 32 before each Adam step
# (coupled L2 weight decay): one batch of 128 with the mean loss and weight decay / 4 is the same update.
# where each value of params.yaml's baselines.selfmm section comes from (a comment: no code reads it)
# - a_lstm_hidden: official config: a_lstm_hidden_size (MOSI 32, MOSEI 32)
# - v_lstm_hidden: official config: v_lstm_hidden_size (MOSI 64, MOSEI 32)
# - a_lstm_layers: official config: a_lstm_layers 1
# - v_lstm_layers: official config: v_lstm_layers 1
# - a_lstm_dropout: official config: a_lstm_dropout 0.0
# - v_lstm_dropout: official config: v_lstm_dropout 0.0
# - a_out: official config: audio_out 16 (the sLSTM's output width d_a)
# - v_out: official config: video_out 32 (d_v)
# - post_m_dim: official config: post_fusion_dim 128 (d_m, the width of F_m^*)
# - post_t_dim: official config: post_text_dim (MOSI 64, MOSEI 32)
# - post_a_dim: official config: post_audio_dim 16
# - post_v_dim: official config: post_video_dim (MOSI 32, MOSEI 16)
# - post_m_dropout: official config: post_fusion_dropout (MOSI 0.1, MOSEI 0.0)
# - post_t_dropout: official config: post_text_dropout (MOSI 0.0, MOSEI 0.1)
# - post_a_dropout: official config: post_audio_dropout (MOSI 0.1, MOSEI 0.0)
# - post_v_dropout: official config: post_video_dropout 0.1
# - head_hidden_layers: paper: one ReLU layer then the output layer (1); the official models/SELF_MM.py has two (2)
# - ulgm_rule: paper Eq. 5-8 (paper); official trains/SELF_MM.py counts a zero label as positive and uses the plain L2
#   norm (official)
# - label_bound: official config H = 3.0: generated labels clipped to [-H, H] (the paper does not clip)
# - lr_a: official config: learning_rate_audio (MOSI 1e-3, MOSEI 5e-3), Adam
# - lr_v: official config: learning_rate_video 1e-4, Adam
# - wd_a: official config: weight_decay_audio (MOSI 0.01, MOSEI 0.0) / 4 (update_epochs)
# - wd_v: official config: weight_decay_video (MOSI 0.001, MOSEI 0.0) / 4
# - wd_other: official config: weight_decay_other (MOSI 0.001, MOSEI 0.01) / 4
# - train.epochs: not in paper or code (the code stops 8 epochs after the best validation loss, no cap); 30 epochs,
#   selection on the validation MAE as the code's KeyEval 'Loss'
# - train.batch_size: official config: batch_size 32 x update_epochs 4 (gradients summed over 4 mini-batches)
# - train.lr: official config: learning_rate_bert 5e-5 (the text encoder)
# - train.lr_new_modules: official config: learning_rate_other 1e-3 (the four heads)
# - train.weight_decay: official config: weight_decay_bert 0.001 / 4 (none on biases and LayerNorm, as the code)
# - train.warmup_ratio: official code: no schedule (constant rates); 0
# - train.grad_clip: official code: no clipping
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
