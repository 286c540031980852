"""MAG's row and params section (torch-free): Rahman et al., "Integrating Multimodal Information in Large
Pretrained Transformers", ACL 2020. The model is cpsl.baselines.mag; docs/baselines.md has the equations."""
from __future__ import annotations

from cpsl.baselines.spec import BaselineSpec
from cpsl.config.param_types import choice, number

SECTION = "mag"
# where each value of params.yaml's baselines.mag section comes from: README.md in this folder
HYPER = {
    "injection_layer": number(0, integer=True),  # at most the text encoder's layer count (checked when built)
    "beta_shift": number(0, lo_open=True),
    "epsilon": number(0, lo_open=True),
    "dropout": number(0, 1, hi_open=True),
    "head_dropout": number(0, 1, hi_open=True),
    "pooling": choice("cls", "mean"),
    "loss": choice("mse", "l1"),
}


SPEC = BaselineSpec(row="MAG", section=SECTION, label="MAG (Rahman et al., ACL 2020)",
                    paper_rows={"d": "MAG (d)", "b": "MAG (b)"}, hyper=HYPER)
