"""Row -> training recipe (cpsl.train.recipe): the CP+SL rows share one (cpsl.model.recipe.CPSLRecipe), each
baseline has its own, ``RECIPE`` in its package's ``recipe`` module (cpsl.baselines.registry); a baseline without
one trains with the default ``Recipe``: its model's losses, AdamW, linear warmup/decay. Imported by name at call
time, so the generic train kit depends on no row's code (cpsl.runtime.deps.row_files)."""
from __future__ import annotations

import importlib
import importlib.util

from cpsl.config import rows
from cpsl.nn import zoo
from cpsl.train.distributed import DistContext
from cpsl.train.recipe import Recipe
from cpsl.train.step import cpsl_recipe


def baseline_recipe(row_id: str) -> type[Recipe]:
    """The recipe class of a baseline row: its package's ``recipe.RECIPE``, or the default ``Recipe``."""
    package = rows.row(row_id).baseline.package
    if importlib.util.find_spec(package + ".recipe") is None:
        return Recipe
    return importlib.import_module(package + ".recipe").RECIPE


def recipe_for(model, params: dict, row_id: str, ctx: DistContext, train: dict | None = None) -> Recipe:
    """The recipe that trains ``model`` as row ``row_id`` with its run params; ``train``: the training split's
    tensors (on the device), for recipes with per-segment state."""
    if rows.row(row_id).baseline is None:
        return cpsl_recipe()(model, params, row_id, ctx)
    cls = baseline_recipe(row_id)
    return cls(model, params, row_id, ctx, losses_fn=zoo.baseline_losses(row_id), train=train)
