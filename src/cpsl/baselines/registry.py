"""The Table 1 baselines as rows of the pipeline: row ID, params section, table labels (torch-free).

Each baseline declares itself in a torch-free module ``cpsl/baselines/<name>_spec.py`` holding ``SPEC =
BaselineSpec(...)`` and is listed in :data:`BASELINES`; from there ``cpsl.rows`` makes it a row (``ablations``,
``cpsl train --ablation <ROW>``, run folders ``<ROW>-seed<k>``, the report's tables) and ``cpsl.config`` validates
its params section ``baselines.<section>.{mosi,mosei}``:

    baselines:
      <section>:
        mosi:                    # the values for CMU-MOSI (the demo uses these too)
          <hyper-parameter>: ... # BaselineSpec.hyper: every value from the baseline's paper or its official code
          train:                 # its own schedule on MOSI/MOSEI: TRAIN_KEYS, replacing train.* for its runs
            epochs: ...
        mosei: {...}

On the demo a baseline takes its ``mosi`` hyper-parameters and the demo's schedule (``train`` with ``demo.train``),
like every row; on MOSI/MOSEI its own schedule replaces ``train.*`` (cpsl.rows.run_params). The model itself
(torch) is registered in cpsl.model.zoo, its training recipe, if it needs one, in cpsl.train.recipes.
"""
from __future__ import annotations

from typing import Mapping

from cpsl.baselines import ithp_spec, mag_spec, mmim_spec, selfmm_spec
from cpsl.baselines.spec import BaselineSpec
from cpsl.param_types import Spec

DATASETS = ("mosi", "mosei")  # the sub-sections of every baseline section (the demo reads "mosi")
# the train.* keys a baseline's schedule sets on MOSI/MOSEI (train.seeds and train.bf16 stay global)
TRAIN_KEYS = ("epochs", "batch_size", "lr", "lr_new_modules", "weight_decay", "warmup_ratio", "grad_clip")


# One entry per baseline: the order of Table 1's rows from runs.
BASELINES: tuple[BaselineSpec, ...] = (
    mag_spec.SPEC,
    ithp_spec.SPEC,
    mmim_spec.SPEC,
    selfmm_spec.SPEC,
)


def schema(train_schema: Mapping[str, Spec]) -> dict:
    """The ``baselines`` section of cpsl.config.SCHEMA; ``train_schema`` is SCHEMA["train"] (its checks are reused
    for each baseline's schedule)."""
    train = {key: train_schema[key] for key in TRAIN_KEYS}
    return {spec.section: {ds: {**spec.hyper, "train": dict(train)} for ds in DATASETS} for spec in BASELINES}
