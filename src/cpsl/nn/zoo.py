"""Row ID -> model: what ``cpsl train`` builds and ``cpsl evaluate`` rebuilds from a checkpoint.

Every model takes ``forward(input_ids, attention_mask, acoustic, visual)`` (the cache's tensors: acoustic/visual
raw, word-aligned to the subwords) and returns an object with at least ``prediction`` (B,): evaluation, the
modality-reliance check and the report need nothing else. The CP+SL rows are cpsl.model.network (switches from
cpsl.config.ablations); a baseline's package (cpsl.baselines.registry) holds in its ``model`` module the model class
``MODEL``, built as ``MODEL(text_encoder, acoustic_dim, visual_dim, hp)`` (hp: its params for the dataset,
cpsl.config.rows.hyper), and its objective ``LOSSES(out, label, hp) -> {"total", "task", ...}`` (what its training
recipe
minimises by default). Both are imported by name when a row is built: this module imports no row's model, so the
generic train/evaluate kit never depends on one (cpsl.runtime.deps.row_files).
"""
from __future__ import annotations

import importlib

import transformers
from torch import nn

from cpsl.config import rows
from cpsl.config.ablations import Switches, switches_for
from cpsl.nn.text_encoder import load_text_encoder

CPSL_NETWORK = "cpsl.model.network"  # the CP+SL rows' model (build_model)


def _baseline_model_module(row_id: str):
    return importlib.import_module(rows.row(row_id).baseline.package + ".model")


def build(params: dict, row_id: str, acoustic_dim: int, visual_dim: int,
          text_model: str | transformers.PretrainedConfig, pretrained: bool = True,
          switches: Switches | None = None) -> nn.Module:
    """The model of ``row_id`` from ``params`` (a run's params: cpsl.config.rows.run_params). ``switches``: a CP+SL
    row's switch set as recorded in its checkpoint (default: the row's own)."""
    if rows.row(row_id).baseline is None:
        build_model = importlib.import_module(CPSL_NETWORK).build_model
        return build_model(params, switches if switches is not None else switches_for(row_id), acoustic_dim,
                           visual_dim, text_model, pretrained)
    model_cls = _baseline_model_module(row_id).MODEL
    return model_cls(load_text_encoder(text_model, pretrained), acoustic_dim, visual_dim, rows.hyper(params, row_id))


def baseline_losses(row_id: str):
    """The objective ``losses(out, label, hp)`` of a baseline row."""
    return _baseline_model_module(row_id).LOSSES
