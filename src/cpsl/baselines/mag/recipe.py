"""MAG's training recipe (cpsl.train.recipe): its objective with AdamW as in the official code, where biases and
LayerNorm parameters have no weight decay. Everything else is the default recipe."""
from __future__ import annotations

from cpsl.train.recipe import Recipe


class MAGRecipe(Recipe):
    no_decay_on_biases_and_norms = True


RECIPE = MAGRecipe  # what cpsl.train.recipes trains this baseline's row with
