"""Tables 1 and 2 of the paper, with our seed-aggregated numbers beside the published ones.

Input is the summary dict that :mod:`cpsl.report.stage` writes to summary.json (test split).
Choices (the paper is silent on them):
* Acc-2 / F1 in the primary columns use the NON-ZERO convention (zero-labelled segments left out);
  the has-zero values are shown in extra columns, so a reader can compare with either convention.
* "mean +/- std" is over seeds, std with ddof=1; with one seed the std is shown as "n/a".
* Corr is x100 in Table 2 (as the paper prints it) and raw in Table 1 (as the paper prints it).
* Modality reliance (ours): the change of test MAE when the acoustic (dMAE perm-A) or visual (dMAE perm-V)
  stream is permuted across test segments (cpsl.evaluate.reliance). About 0 = the row ignores that stream.
* T0 (text only) is ours and has no paper values; the paper's duplicate rows (B1 = A1, C3 = A2, C4 = A5)
  are the same runs under both labels.
* "a/v not learnt" (ours): how many of a row's seeds have an acoustic/visual path that learnt nothing
  (cpsl.evaluate.learnt: the one rule, called per row by both tables; a marked row gets a footnote).
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from cpsl.ablations import ABLATIONS
from cpsl.evaluate import learnt
from cpsl.io_utils import spreadsheet_text, write_text_atomic
from cpsl.report.paper_results import FULL_MODEL_ID, TABLE1, TABLE2, TABLE2_CORR_SCALE, TABLE2_DATASET

# (column label, our metric key, paper field, scale for our value in Table 2, decimals)
TABLE2_COLUMNS = (
    ("Acc-2", "acc2_nonzero", "acc2", 1.0, 2),
    ("F1", "f1_nonzero", "f1", 1.0, 2),
    ("MAE", "mae", "mae", 1.0, 4),
    ("Corr x100", "corr", "corr", TABLE2_CORR_SCALE, 2),
)
HASZERO_COLUMNS = (("Acc-2 has-zero", "acc2_haszero", 2), ("F1 has-zero", "f1_haszero", 2))
# (column label, stream, metric, decimals): permuted minus intact, mean +/- std over seeds
RELIANCE_COLUMNS = (("dMAE perm-A", "acoustic", "mae", 4), ("dMAE perm-V", "visual", "mae", 4))

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


def _stat(summary: dict, ablation: str, key: str) -> dict:
    return summary["ablations"][ablation]["test"].get(key, {})


def _reliance_stat(summary: dict, ablation: str, stream: str, key: str) -> dict:
    return (summary["ablations"][ablation].get("reliance") or {}).get(stream, {}).get(key, {})


def _paper(aid: str):
    """(configuration label, paper values or None): T0 is ours and has no paper row."""
    if aid in TABLE2:
        return TABLE2[aid]
    return ABLATIONS[aid][1], None


def _configuration(summary: dict, aid: str) -> str:
    label = _paper(aid)[0]
    trained_as = summary["ablations"][aid].get("trained_as", aid)
    return label if trained_as == aid else f"{label} (same runs as {trained_as})"


def _fmt(mean, std, decimals: int, scale: float = 1.0) -> str:
    if mean is None:
        return "n/a"
    text = f"{mean * scale:.{decimals}f}"
    return text + (f" ± {std * scale:.{decimals}f}" if std is not None else " ± n/a")


def _num(v, scale: float = 1.0):
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else round(v * scale, 6)


def ordered_ids(summary: dict) -> list[str]:
    """Ablation IDs that have runs, in the paper's row order."""
    return [a for a in ABLATIONS if a in summary["ablations"]]


def table2_rows(summary: dict) -> list[dict]:
    """One row per ablation with runs, paper order: our mean/std and the paper's value per column."""
    rows = []
    for aid in ordered_ids(summary):
        entry = summary["ablations"][aid]
        paper = _paper(aid)[1]
        row = {"id": aid, "configuration": _configuration(summary, aid), "n_seeds": len(entry["seeds"]),
               "seeds": " ".join(str(s) for s in entry["seeds"])}
        for _, key, field, scale, _d in TABLE2_COLUMNS:
            st = _stat(summary, aid, key)
            short = field if field != "corr" else "corr_x100"
            row[f"{short}_mean"] = _num(st.get("mean"), scale)
            row[f"{short}_std"] = _num(st.get("std"), scale)
            row[f"{short}_paper"] = "" if paper is None else getattr(paper, field)
        for _, key, _d in HASZERO_COLUMNS:
            st = _stat(summary, aid, key)
            row[f"{key}_mean"] = _num(st.get("mean"))
            row[f"{key}_std"] = _num(st.get("std"))
        for _, stream, key, _d in RELIANCE_COLUMNS:
            st = _reliance_stat(summary, aid, stream, key)
            row[f"reliance_{stream}_{key}_mean"] = _num(st.get("mean"))
            row[f"reliance_{stream}_{key}_std"] = _num(st.get("std"))
        row["av_not_learnt"] = learnt.csv_cell(entry.get("av_learnt"))
        rows.append(row)
    return rows


def table2_csv(summary: dict) -> str:
    rows = table2_rows(summary)
    buf = io.StringIO()
    fields = list(rows[0]) if rows else ["id"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: spreadsheet_text(v) if isinstance(v, str) else v for k, v in row.items()} for row in rows)
    return buf.getvalue()


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


def table2_markdown(summary: dict) -> str:
    dataset = summary["dataset"]
    head = [f"# Table 2 (ablation) - ours on `{dataset}` beside the paper", ""]
    if dataset != TABLE2_DATASET:
        head += [f"**The paper's values are for CMU-MOSI; ours are on `{dataset}`: not directly comparable.**", ""]
    head += [CONVENTION_NOTE, "", RELIANCE_NOTE, ""]
    cols = ["ID", "Configuration", "Seeds"]
    for label, *_ in TABLE2_COLUMNS:
        cols += [f"{label} (ours)", f"{label} (paper)"]
    cols += [label for label, *_ in HASZERO_COLUMNS]
    cols += [label for label, *_ in RELIANCE_COLUMNS]
    cols.append("a/v not learnt (seeds)")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for aid in ordered_ids(summary):
        entry = summary["ablations"][aid]
        paper = _paper(aid)[1]
        cells = [aid, _configuration(summary, aid), str(len(entry["seeds"]))]
        for _, key, field, scale, d in TABLE2_COLUMNS:
            st = _stat(summary, aid, key)
            cells += [_fmt(st.get("mean"), st.get("std"), d, scale),
                      "-" if paper is None else f"{getattr(paper, field):.{d}f}"]
        for _, key, d in HASZERO_COLUMNS:
            st = _stat(summary, aid, key)
            cells.append(_fmt(st.get("mean"), st.get("std"), d))
        for _, stream, key, d in RELIANCE_COLUMNS:
            st = _reliance_stat(summary, aid, stream, key)
            cells.append(_fmt(st.get("mean"), st.get("std"), d))
        cells.append(learnt.table_cell(entry.get("av_learnt")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(head + lines + learnt_footnote(summary, ordered_ids(summary)) + comparison_lines(summary)) + "\n"


def learnt_footnote(summary: dict, ids) -> list[str]:
    """The footnote explaining the a/v-not-learnt mark, when one of the table's rows ``ids`` carries it."""
    rows = [summary["ablations"][a].get("av_learnt") for a in ids if a in summary["ablations"]]
    return ["", learnt.FOOTNOTE] if learnt.any_marked(rows) else []


def _table1_block(title: str, rows: list[tuple[str, tuple]], ours: list[str] | None) -> list[str]:
    out = [f"### {title}", "", "| Method | Acc-2 | F1 | MAE | Corr |", "|---|---|---|---|---|"]
    for name, r in rows:
        out.append(f"| {name} | {r.acc2:.2f} | {r.f1:.2f} | {r.mae:.3f} | {r.corr:.3f} |")
    if ours:
        out.append("| " + " | ".join(ours) + " |")
    return out + [""]


def table1_markdown(summary: dict) -> str:
    dataset = summary["dataset"]
    lines = [f"## The paper's Table 1 - our full model ({FULL_MODEL_ID}) on `{dataset}` beside the paper's rows", ""]
    ours = None
    if FULL_MODEL_ID in summary["ablations"]:
        n = len(summary["ablations"][FULL_MODEL_ID]["seeds"])
        mark = learnt.table1_suffix(summary["ablations"][FULL_MODEL_ID].get("av_learnt"))
        ours = [f"**Ours (this reproduction, {n} seed{'s' if n != 1 else ''})**{mark}"]
        for key, d in (("acc2_nonzero", 2), ("f1_nonzero", 2), ("mae", 3), ("corr", 3)):
            st = _stat(summary, FULL_MODEL_ID, key)
            ours.append(_fmt(st.get("mean"), st.get("std"), d))
        hz = [_fmt(_stat(summary, FULL_MODEL_ID, k).get("mean"), _stat(summary, FULL_MODEL_ID, k).get("std"), 2)
              for k in ("acc2_haszero", "f1_haszero")]
        conv = (f"{CONVENTION_NOTE} Has-zero for our row: Acc-2 {hz[0]}, F1 {hz[1]}. "
                "Paper rows are copied from its Table 1; their conventions are those of the cited works.")
    else:
        conv = f"No run of the full model {FULL_MODEL_ID} was found; only the paper's rows are listed."
    lines += [conv, ""]
    if dataset in TABLE1:
        lines += _table1_block(f"CMU-{dataset.upper()}", TABLE1[dataset], ours)
    else:
        lines += [f"**The paper's rows below are for CMU-MOSI and CMU-MOSEI; ours are on `{dataset}`. "
                  "They are NOT comparable: they are listed only for the table's layout.**", ""]
        if ours:
            lines += [f"### Ours on `{dataset}`", "", "| Method | Acc-2 | F1 | MAE | Corr |", "|---|---|---|---|---|",
                      "| " + " | ".join(ours) + " |", ""]
        for name in ("mosi", "mosei"):
            lines += _table1_block(f"CMU-{name.upper()} (paper)", TABLE1[name], None)
    lines += learnt_footnote(summary, [FULL_MODEL_ID])
    return "\n".join(lines).rstrip() + "\n"


def write_tables(summary: dict, out_dir) -> list[str]:
    """Write table2.md, table2.csv, table1.md (Table 1 from runs, then the paper's Table 1 beside our A6) and
    table1.csv atomically into ``out_dir``; return the paths."""
    from cpsl.report import table1

    out_dir = Path(out_dir)
    written = []
    t1 = table1.runs_markdown(summary) + "\n" + table1_markdown(summary)
    for name, text in (("table2.md", table2_markdown(summary)), ("table2.csv", table2_csv(summary)),
                       ("table1.md", t1), ("table1.csv", table1.runs_csv(summary))):
        write_text_atomic(out_dir / name, text)
        written.append(str(out_dir / name))
    return written
