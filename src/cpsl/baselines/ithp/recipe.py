"""ITHP's training recipe (cpsl.train.recipe): its objective's named terms as history columns, and AdamW as in the
official code (one learning rate, no weight decay on biases and LayerNorm parameters). Everything else is the
default recipe: ITHP has no modality encoders to modulate, no extra optimisation and no per-segment state."""
from __future__ import annotations

from cpsl.baselines.ithp.model import LOSS_TERMS
from cpsl.train.recipe import Recipe


class ITHPRecipe(Recipe):
    terms = LOSS_TERMS
    no_decay_on_biases_and_norms = True


RECIPE = ITHPRecipe  # what cpsl.train.recipes trains this baseline's row with
