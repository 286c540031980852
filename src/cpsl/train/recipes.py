"""Row -> training recipe (cpsl.train.recipe): the CP+SL rows share one, each baseline has its own (one line per
baseline in :data:`BASELINE_RECIPES`, under its params section; a baseline without an entry trains with the default
``Recipe``: its model's losses, AdamW, linear warmup/decay)."""
from __future__ import annotations

from cpsl import rows
from cpsl.baselines.ithp_training import ITHPRecipe
from cpsl.baselines.mag_training import MAGRecipe
from cpsl.baselines.mmim_training import MMIMRecipe
from cpsl.baselines.selfmm_training import SelfMMRecipe
from cpsl.model import zoo
from cpsl.train.distributed import DistContext
from cpsl.train.recipe import Recipe
from cpsl.train.step import CPSLRecipe

BASELINE_RECIPES: dict[str, type[Recipe]] = {
    "mag": MAGRecipe,
    "ithp": ITHPRecipe,
    "mmim": MMIMRecipe,
    "selfmm": SelfMMRecipe,
}


def recipe_for(model, params: dict, row_id: str, ctx: DistContext, train: dict | None = None) -> Recipe:
    """The recipe that trains ``model`` as row ``row_id`` with its run params; ``train``: the training split's
    tensors (on the device), for recipes with per-segment state."""
    spec = rows.row(row_id).baseline
    if spec is None:
        return CPSLRecipe(model, params, row_id, ctx)
    cls = BASELINE_RECIPES.get(spec.section, Recipe)
    return cls(model, params, row_id, ctx, losses_fn=zoo.baseline_losses(row_id), train=train)
