"""Row ID -> model: what ``cpsl train`` builds and ``cpsl evaluate`` rebuilds from a checkpoint.

Every model takes ``forward(input_ids, attention_mask, acoustic, visual)`` (the cache's tensors: acoustic/visual
raw, word-aligned to the subwords) and returns an object with at least ``prediction`` (B,): evaluation, the
modality-reliance check and the report need nothing else. The CP+SL rows are cpsl.model.network (switches from
cpsl.ablations); a baseline is registered in :data:`BASELINE_MODELS` under its params section with its model class,
built as ``cls(text_encoder, acoustic_dim, visual_dim, hp)`` (hp: its params for the dataset, cpsl.rows.hyper), and
its objective ``losses(out, label, hp) -> {"total", "task", ...}`` (what its training recipe minimises by default).
"""
from __future__ import annotations

import transformers
from torch import nn

from cpsl import rows
from cpsl.ablations import Switches, switches_for
from cpsl.baselines import ithp, mag, mmim, selfmm
from cpsl.model.network import build_model
from cpsl.model.text_encoder import load_text_encoder

# baseline params section -> (model class, losses function); one line per baseline
BASELINE_MODELS = {
    "mag": (mag.MAGModel, mag.losses),
    "ithp": (ithp.ITHPModel, ithp.ithp_losses),
    "mmim": (mmim.MMIM, mmim.losses),
    "selfmm": (selfmm.SelfMM, selfmm.selfmm_losses),
}


def build(params: dict, row_id: str, acoustic_dim: int, visual_dim: int,
          text_model: str | transformers.PretrainedConfig, pretrained: bool = True,
          switches: Switches | None = None) -> nn.Module:
    """The model of ``row_id`` from ``params`` (a run's params: cpsl.rows.run_params). ``switches``: a CP+SL
    row's switch set as recorded in its checkpoint (default: the row's own)."""
    spec = rows.row(row_id).baseline
    if spec is None:
        return build_model(params, switches if switches is not None else switches_for(row_id), acoustic_dim,
                           visual_dim, text_model, pretrained)
    model_cls, _ = BASELINE_MODELS[spec.section]
    return model_cls(load_text_encoder(text_model, pretrained), acoustic_dim, visual_dim, rows.hyper(params, row_id))


def baseline_losses(row_id: str):
    """The objective ``losses(out, label, hp)`` of a baseline row."""
    return BASELINE_MODELS[rows.row(row_id).baseline.section][1]
