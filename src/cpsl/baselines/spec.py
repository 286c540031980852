"""What a Table 1 baseline declares about itself, torch-free: ``BaselineSpec`` (see cpsl.baselines.registry)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class BaselineSpec:
    row: str                       # the row ID: `ablations`, `cpsl train --ablation`, run folder <row>-seed<k>
    section: str                   # its params section: baselines.<section>
    label: str                     # the configuration label in the tables
    paper_rows: Mapping[str, str]  # text backbone ("d" DeBERTa, "b" BERT) -> its row name in paper_results.TABLE1
    hyper: Mapping[str, object]    # schema of one dataset sub-section besides `train` (cpsl.config.param_types leaves)
    # False where the prediction never reads the acoustic/visual inputs (ITHP: they are only training targets of
    # its bottleneck); cpsl.metrics.av_learnt then has nothing to judge and says so
    reads_av_at_inference: bool = True
    av_note: str = ""              # why, in one line (metrics.json ``learnt.note``)
    # its package (set by cpsl.baselines.registry): <package>.model has MODEL and LOSSES, <package>.recipe (if any)
    # RECIPE; cpsl.nn.zoo and cpsl.train.recipes import them by this name, cpsl.runtime.deps reads its folder as the
    # row's code
    package: str = ""
