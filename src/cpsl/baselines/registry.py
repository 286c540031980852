"""The Table 1 baselines as rows of the pipeline: row ID, params section, table labels (torch-free).

Each baseline is one self-contained package ``cpsl/baselines/<name>/`` (model.py: ``MODEL`` and ``LOSSES``; recipe.py,
if it needs one: ``RECIPE``; spec.py, torch-free: ``SPEC = BaselineSpec(...)``; README.md: where every value comes
from) listed by name in :data:`PACKAGES`, one line per baseline; from there ``cpsl.config.rows`` makes it a row
(``ablations``,
``cpsl train --ablation <ROW>``, run folders ``<ROW>-seed<k>``, the report's tables) and ``cpsl.config.schema``
validates
its params section ``baselines.<section>.{mosi,mosei}``:

    baselines:
      <section>:
        mosi:                    # the values for CMU-MOSI (the demo uses these too)
          <hyper-parameter>: ... # BaselineSpec.hyper: every value from the baseline's paper or its official code
          train:                 # its own schedule on MOSI/MOSEI: TRAIN_KEYS, replacing train.* for its runs
            epochs: ...
        mosei: {...}

On the demo a baseline takes its ``mosi`` hyper-parameters and the demo's schedule (``train`` with ``demo.train``),
like every row; on MOSI/MOSEI its own schedule replaces ``train.*`` (cpsl.config.rows.run_params). The model itself
(torch) is registered in cpsl.nn.zoo, its training recipe, if it needs one, in cpsl.train.recipes.
"""
from __future__ import annotations

import dataclasses
import importlib
import sys
from typing import Mapping

from cpsl.baselines.spec import BaselineSpec
from cpsl.config.param_types import Spec

DATASETS = ("mosi", "mosei")  # the sub-sections of every baseline section (the demo reads "mosi")
# the train.* keys a baseline's schedule sets on MOSI/MOSEI (train.seeds and train.bf16 stay global)
TRAIN_KEYS = ("epochs", "batch_size", "lr", "lr_new_modules", "weight_decay", "warmup_ratio", "grad_clip")


# One line per baseline, its package: the order of Table 1's rows from runs.
PACKAGES: tuple[str, ...] = (
    "cpsl.baselines.mag",
    "cpsl.baselines.ithp",
    "cpsl.baselines.mmim",
    "cpsl.baselines.selfmm",
)


def load_spec(package: str) -> BaselineSpec:
    """``<package>.spec.SPEC``, knowing its package."""
    return dataclasses.replace(importlib.import_module(f"{package}.spec").SPEC, package=package)


BASELINES: tuple[BaselineSpec, ...] = tuple(load_spec(p) for p in PACKAGES)


def extend(package: str) -> None:
    """Register one more baseline package (importable, e.g. from a folder on ``sys.path``) after the built-in ones.
    Call it before anything imports cpsl.config.rows (cpsl.config.schema, the stages): the rows and the params schema
    are made
    from :data:`BASELINES` once, at import."""
    global PACKAGES, BASELINES
    if "cpsl.config.rows" in sys.modules:
        raise RuntimeError("cpsl.baselines.registry.extend: cpsl.config.rows is already imported; "
                           "extend the registry first")
    PACKAGES = (*PACKAGES, package)
    BASELINES = (*BASELINES, load_spec(package))


def schema(train_schema: Mapping[str, Spec]) -> dict:
    """The ``baselines`` section of cpsl.config.schema.SCHEMA; ``train_schema`` is SCHEMA["train"] (its checks are
    reused
    for each baseline's schedule)."""
    train = {key: train_schema[key] for key in TRAIN_KEYS}
    return {spec.section: {ds: {**spec.hyper, "train": dict(train)} for ds in DATASETS} for spec in BASELINES}
