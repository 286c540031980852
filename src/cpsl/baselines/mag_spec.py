"""MAG's row and params section (torch-free): Rahman et al., "Integrating Multimodal Information in Large
Pretrained Transformers", ACL 2020. The model is cpsl.baselines.mag; docs/baselines.md has the equations."""
from __future__ import annotations

from cpsl.baselines.spec import BaselineSpec
from cpsl.param_types import choice, number

SECTION = "mag"
# official code = github.com/WasifurRahman/BERT_multimodal_transformer (bert.py, modeling.py, multimodal_driver.py)
# where each value of params.yaml's baselines.mag section comes from (a comment: no code reads it)
# - injection_layer: official bert.py applies MAG to the embedding output (0 = before transformer layer 0); the paper's
#   position study was not re-read offline (docs/baselines.md)
# - beta_shift: official multimodal_driver.py --beta_shift default 1.0 (the paper's threshold beta)
# - epsilon: official modeling.py eps = 1e-6 (the paper's epsilon)
# - dropout: official multimodal_driver.py --dropout_prob default 0.5 (dropout after MAG's LayerNorm)
# - head_dropout: official bert.py: dropout(hidden_dropout_prob = 0.1 for BERT) before the regression layer
# - pooling: official bert.py: the BERT pooler (dense + tanh on [CLS]) feeds the regression layer
# - loss: official multimodal_driver.py train_epoch: MSELoss (the paper does not name the loss)
# - train.epochs: official --n_epochs 40
# - train.batch_size: official --train_batch_size 48
# - train.lr: official --learning_rate 1e-5, one rate for every parameter (lr_new_modules: null)
# - train.weight_decay: official AdamW groups: 0.01, and 0 on biases and LayerNorm weights
# - train.warmup_ratio: official --warmup_proportion 0.1 (linear warmup then linear decay)
# - train.grad_clip: official code: no clipping
HYPER = {
    "injection_layer": number(0, integer=True),  # at most the text encoder's layer count (checked when built)
    "beta_shift": number(0, lo_open=True),
    "epsilon": number(0, lo_open=True),
    "dropout": number(0, 1, hi_open=True),
    "head_dropout": number(0, 1, hi_open=True),
    "pooling": choice("cls", "mean"),
    "loss": choice("mse", "l1"),
}


SPEC = BaselineSpec(row="MAG", section=SECTION, label="MAG (Rahman et al., ACL 2020)",
                    paper_rows={"d": "MAG (d)", "b": "MAG (b)"}, hyper=HYPER)
