"""Names several stages share, defined once: loss terms, modalities, tensor keys, modulation telemetry.

No imports beyond the standard library: the report stage reads these names without loading torch.
"""
from __future__ import annotations

MODALITIES = ("a", "v")  # acoustic, visual: the streams AME encodes and gradient modulation balances
# the auxiliary terms of Eq. 4, in the paper's order; LOSS_TERMS adds their weighted sum "total" first
AUX_TERMS = ("task", "recon", "uni", "div", "stat")
LOSS_TERMS = ("total",) + AUX_TERMS
# what the model reads from a cache split, and the target
MODEL_INPUTS = ("input_ids", "attention_mask", "acoustic", "visual")
TENSOR_KEYS = MODEL_INPUTS + ("label",)
# epoch means of the modulation telemetry; mae_a/mae_v are the unimodal heads' training MAEs that drive Eq. 5
TELEMETRY = ("c_a", "c_v", "g_a", "g_v", "mae_a", "mae_v", "imbalance")
COUNTS = ("gm/conflicts", "gm/ge_steps")  # per epoch: Eq. 6 penalties applied, steps with GE noise
