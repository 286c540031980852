"""MMIM's row and params section (torch-free): Han, Chen, Poria, "Improving Multimodal Fusion with Hierarchical
Mutual Information Maximization for Multimodal Sentiment Analysis", EMNLP 2021. The model is cpsl.baselines.mmim,
its estimators cpsl.baselines.mmim_estimators, its two-stage training cpsl.baselines.mmim_training;
docs/baselines.md has the equations, every source and every deviation."""
from __future__ import annotations

from cpsl.baselines.spec import BaselineSpec
from cpsl.param_types import BOOL, Spec, choice, number

SECTION = "mmim"
PAIRS = ("tv", "ta", "va")            # BA pairs x -> y: text->visual, text->acoustic, visual->acoustic
LLD_FORMS = ("gaussian", "official")  # log q(y|x): the Gaussian log-density | the official code's term
CPC_NEGATIVES = ("modality", "prediction")
STAGE1 = ("step", "epoch")            # stage 1 before every step on its batch | one pass before each epoch


def _pairs(value) -> bool:
    return bool(value) and len(set(value)) == len(value) and all(isinstance(p, str) and p in PAIRS for p in value)


# official code = github.com/declare-lab/Multimodal-Infomax, src/{config,solver,model}.py, src/modules/encoders.py;
# its README trains with `python main.py --dataset mosi --contrast`: config.py's defaults, for MOSI and MOSEI alike
# where each value of params.yaml's baselines.mmim section comes from (a comment: no code reads it)
# - acoustic_hidden: official config.py --d_ah 16 (LSTM hidden size)
# - visual_hidden: official config.py --d_vh 16
# - acoustic_out: official config.py --d_aout 16 (h_a after the LSTM's output Linear)
# - visual_out: official config.py --d_vout 16
# - rnn_layers: official config.py --n_layer 1
# - rnn_bidirectional: official config.py --bidirectional (store_true, off in the README's command)
# - rnn_dropout: official config.py --dropout_a/--dropout_v 0.1, passed as 0 to a one-layer LSTM (model.py)
# - fusion_hidden: official config.py --d_prjh 128 (width of the fusion MLP and of Z)
# - fusion_dropout: official config.py --dropout_prj 0.1 (on the concatenated representations)
# - cpc_layers: official config.py --cpc_layers 1 (G: one Linear)
# - cpc_negatives: paper's L_N: for each fusion result, the batch's modality vectors; 'prediction' = official
#   encoders.py CPC (for each modality vector, the batch's predictions)
# - ba_pairs: paper: text-visual and text-acoustic; official --add_va (off) adds visual-acoustic
# - lld_form: paper: q(y|x) Gaussian, log-density with log sigma^2; 'official' = encoders.py MMILB's term -(y - mu)^2 /
#   (2 sigma^2) without it
# - entropy_memory: official solver.py mem_size = 1 (batches of history in the entropy estimate)
# - cpc_weight: official config.py --alpha 0.1 (weight of the CPC term, solver.py: + alpha * nce)
# - ba_weight: official config.py --beta 0.1 (weight of the BA terms, solver.py: - beta * lld - beta * H)
# - lr_estimator: official config.py --lr_mmilb 1e-3 (stage 1's Adam)
# - weight_decay_estimator: official config.py --weight_decay_club 1e-4
# - stage1: step: stage 1 then stage 2 on each batch (issue 14's reading of the paper); 'epoch' = official solver.py: a
#   whole stage-1 pass over the training set before each epoch's stage-2 pass
# - stage1_fraction: official solver.py: MOSEI's stage-1 pass stops after half the batches (epoch mode only)
# - lr_plateau_patience: official solver.py ReduceLROnPlateau(patience=--when 20) on the validation loss
# - lr_plateau_factor: official solver.py ReduceLROnPlateau(factor=0.5)
# - train.epochs: official config.py --num_epochs 40
# - train.batch_size: official config.py --batch_size 32
# - train.lr: official config.py --lr_bert 5e-5 (the text encoder)
# - train.lr_new_modules: official config.py --lr_main 1e-3 (a/v encoders, fusion, CPC)
# - train.weight_decay: official config.py --weight_decay_bert = --weight_decay_main = 1e-4 (Adam, L2)
# - train.warmup_ratio: official solver.py: no warmup (constant rate, halved on a validation plateau)
# - train.grad_clip: official config.py --clip 1.0 (both stages)
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
