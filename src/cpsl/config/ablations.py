"""The named configurations of the paper's Table 2, defined in one place.

Switches:
  ame    Adaptive Modality Encoding: reparameterised sample Z = mu + eps*sqrt(var + varepsilon) (Eq. 1)
         during training. Off: Z = mu (the variance head still exists, so SL stays defined).
  gm     performance-driven gradient modulation of the acoustic/visual encoders (Eq. 5)
  ge     gradient enhancement (OGM-GE): Gaussian noise with the std of the unmodulated gradient,
         added to the modulated encoder gradients (only meaningful with gm)
  cp     Conflict-aware Penalty (Eq. 6) on top of gm
  sl     Statistical Loss (Eq. 3) in the total loss (Eq. 4)
  recon, uni, div   the auxiliary terms of Eq. 4; on in every row of Table 2 (the paper never ablates them)
  av     the acoustic/visual path reaches the prediction (P_av injected, Eq. 2); off only in T0

T0 is ours, not the paper's: the text encoder and task head alone (no injection, no auxiliary losses), the
reference every multimodal row must beat to show that it uses the acoustic and visual streams at all.

Rows that the paper lists twice (A1 = B1, A2 = C3, A5 = C4) are the same switch sets: they are trained once
per seed, under the first ID (:data:`ALIASES`, cpsl.config.rows.canonical), and reported under both labels.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Switches:
    ame: bool = False
    gm: bool = False
    ge: bool = False
    cp: bool = False
    sl: bool = False
    recon: bool = True
    uni: bool = True
    div: bool = True
    av: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


def _s(*on: str) -> Switches:
    return Switches(**{name: True for name in on})


# (switches, the paper's label) in the paper's row order.
ABLATIONS: dict[str, tuple[Switches, str]] = {
    "A0": (_s(), "Baseline"),
    "A1": (_s("ame"), "+AME"),
    "A2": (_s("ame", "gm"), "+AME+GM"),
    "A3": (_s("ame", "gm", "ge"), "+AME+GM+GE"),
    "A4": (_s("ame", "gm", "ge", "cp"), "+AME+GM+GE+CP"),
    "A5": (_s("ame", "gm", "ge", "sl"), "+AME+GM+GE+SL"),
    "A6": (_s("ame", "gm", "ge", "cp", "sl"), "Full Model (Ours)"),
    "B1": (_s("ame"), "AME Only"),
    "B2": (_s("gm"), "GM Only"),
    "B3": (_s("sl"), "SL Only"),
    "B4": (_s("gm", "ge"), "GM+GE"),
    "B5": (_s("gm", "cp"), "GM+CP"),
    "C1": (_s("gm", "ge", "cp"), "GM+GE+CP"),
    "C2": (_s("ame", "sl"), "AME+SL"),
    "C3": (_s("ame", "gm"), "AME+GM"),
    "C4": (_s("ame", "gm", "ge", "sl"), "Full - CP"),
    "C5": (_s("ame", "gm", "cp", "sl"), "Full - GE"),
    "T0": (Switches(av=False, recon=False, uni=False, div=False), "Text only (ours; no a/v)"),
}

# Paper rows with the same switches as an earlier row: trained once, under the earlier ID.
ALIASES: dict[str, str] = {"B1": "A1", "C3": "A2", "C4": "A5"}
PAPER_ROWS = tuple(a for a in ABLATIONS if a != "T0")


def labels_of(trained_id: str) -> list[str]:
    """Every row ID reported from the runs of ``trained_id`` (itself first, then its aliases)."""
    return [trained_id] + [a for a, c in ALIASES.items() if c == trained_id]


def switches_for(ablation_id: str) -> Switches:
    try:
        return ABLATIONS[ablation_id][0]
    except KeyError:
        raise KeyError(f"unknown ablation {ablation_id!r}; known: {', '.join(ABLATIONS)}") from None
