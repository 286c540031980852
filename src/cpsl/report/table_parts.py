"""What Tables 1 and 2 share: the summary lookups, number formatting, the notes under both tables, the paired
comparisons block and the a/v-not-learnt footnote. Both table modules import this one; it imports neither.

Input is the summary dict that :mod:`cpsl.stages.report` writes to summary.json (test split).
Choices (the paper is silent on them):
* Acc-2 / F1 in the primary columns use the NON-ZERO convention (zero-labelled segments left out);
  the has-zero values are shown in extra columns, so a reader can compare with either convention.
* "mean +/- std" is over seeds, std with ddof=1; with one seed the std is shown as "n/a".
* Modality reliance (ours): the change of test MAE when the acoustic (dMAE perm-A) or visual (dMAE perm-V)
  stream is permuted across test segments (cpsl.evaluate.reliance). About 0 = the row ignores that stream.
* "a/v not learnt" (ours): how many of a row's seeds have an acoustic/visual path that learnt nothing
  (cpsl.metrics.av_learnt: the one rule, called per row by both tables; a marked row gets a footnote).
"""
from __future__ import annotations

import math

from cpsl.config.ablations import ABLATIONS
from cpsl.metrics import av_learnt
from cpsl.report.paper_results import FULL_MODEL_ID

CONVENTION_NOTE = (
    "Acc-2 and F1 (weighted) use the non-zero convention: negative vs positive, zero-labelled test segments "
    "left out. The has-zero convention (negative vs non-negative, all segments) is in the last columns. "
    "The paper does not say which convention it uses. MAE and Corr are over all test segments. "
    "Ours: mean +/- std (ddof=1) over seeds, on the test split, checkpoint selected on validation MAE."
)


RELIANCE_NOTE = (
    "dMAE perm-A / perm-V (ours): test MAE with the acoustic / visual stream permuted across test segments, "
    "minus the intact MAE (mean over permutations, then mean +/- std over seeds). About 0: the row does not "
    "use that stream. T0 is the text-only reference (ours, no paper values)."
)


def stat(summary: dict, ablation: str, key: str) -> dict:
    """The row's seed statistics of one test metric ({} when not measured)."""
    return summary["ablations"][ablation]["test"].get(key, {})


def reliance_stat(summary: dict, ablation: str, stream: str, key: str) -> dict:
    """The row's seed statistics of one reliance delta ({} when not measured)."""
    return (summary["ablations"][ablation].get("reliance") or {}).get(stream, {}).get(key, {})


def fmt(mean, std, decimals: int, scale: float = 1.0) -> str:
    """A markdown cell: "mean ± std", "n/a" without a mean."""
    if mean is None:
        return "n/a"
    text = f"{mean * scale:.{decimals}f}"
    return text + (f" ± {std * scale:.{decimals}f}" if std is not None else " ± n/a")


def num(v, scale: float = 1.0):
    """A CSV cell: the scaled value rounded to 6 places, empty when missing or not finite."""
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else round(v * scale, 6)


def comparison_lines(summary: dict, ids=tuple(ABLATIONS)) -> list[str]:
    """The paired comparisons of the full model with the rows ``ids`` that have runs (Table 2: the CP+SL rows)."""
    comp = summary.get("comparisons", {})
    vs = {a: c for a, c in comp.get("vs", {}).items() if a in ids}
    if not vs:
        return ["", f"Paired comparison with {FULL_MODEL_ID}: {comp.get('note', 'no other row of this table')}"]
    lines = ["", f"### Paired comparison: {comp['reference']} minus each configuration (test split)", "",
             "Bootstrap: paired over test segments, seed-averaged difference, percentile 95% interval, two-sided p. "
             "t-test: paired over seeds (scipy.stats.ttest_rel).", "",
             "| ID | shared seeds | ΔAcc-2 [95% CI] | p boot | p t-test | ΔMAE [95% CI] | p boot | p t-test |",
             "|---|---|---|---|---|---|---|---|"]
    for aid in [a for a in ids if a in vs]:
        c = vs[aid]
        cells = [aid, " ".join(map(str, c["shared_seeds"]))]
        for key, d in (("acc2_nonzero", 2), ("mae", 4)):
            b = c.get("paired_bootstrap_over_test_segments", {}).get("metrics", {}).get(key, {})
            t = c.get("paired_t_test_over_seeds", {}).get("metrics", {}).get(key, {})
            if b.get("diff") is None:
                cells += ["n/a", "n/a"]
            else:
                lo, hi = b["ci95"]
                cells += [f"{b['diff']:+.{d}f} [{lo:+.{d}f}, {hi:+.{d}f}]", f"{b['p']:.3g}"]
            cells.append("n/a" if t.get("p") is None else f"{t['p']:.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def learnt_footnote(summary: dict, ids) -> list[str]:
    """The footnote explaining the a/v-not-learnt mark, when one of the table's rows ``ids`` carries it."""
    rows = [summary["ablations"][a].get("av_learnt") for a in ids if a in summary["ablations"]]
    return ["", av_learnt.FOOTNOTE] if av_learnt.any_marked(rows) else []
