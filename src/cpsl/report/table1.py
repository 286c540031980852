"""Table 1 from our own runs: the Table 1 baselines (cpsl.rows: MAG, ...), the text-only reference T0 and the full
model A6, trained on the same cache, folds, seeds and selection, each beside the paper's number.

Per row and metric (test split): mean ± std (ddof=1) and the t 95% interval over seeds (cpsl.report.stats.describe),
for Acc-2 and F1 in both conventions, MAE, Corr and the modality-reliance deltas (dMAE with the acoustic / visual
stream permuted). The paper's number is the row of ``paper_results.TABLE1`` for the dataset: "Ours (paper)" for A6,
and for a baseline the row of its text backbone (``BaselineSpec.paper_rows``: "d" for a DeBERTa text model, "b" for
BERT-base, as the paper names them); none on the demo or for another backbone (e.g. the demo's MiniLM). The paper
does not say which Acc-2/F1 convention its rows use: its numbers stand beside our non-zero ones. Then the paired
comparisons of A6 with each of these rows, the same tests as Table 2 (summary.json ``comparisons``).
"""
from __future__ import annotations

import csv
import io

from cpsl.evaluate import learnt
from cpsl.report.paper_results import FULL_MODEL_ID, TABLE1
from cpsl.report.tables import (
    CONVENTION_NOTE,
    RELIANCE_NOTE,
    _num,
    _reliance_stat,
    _stat,
    comparison_lines,
    learnt_footnote,
)
from cpsl.rows import BASELINE_IDS, ROWS, backbone, is_baseline

# the rows of Table 1, in the paper's order: the baselines, then ours (T0 is our text-only reference)
TABLE1_ORDER = (*BASELINE_IDS, "T0", FULL_MODEL_ID)
# (column label, metric key, paper field or None, decimals)
COLUMNS = (
    ("Acc-2", "acc2_nonzero", "acc2", 2),
    ("F1", "f1_nonzero", "f1", 2),
    ("MAE", "mae", "mae", 3),
    ("Corr", "corr", "corr", 3),
    ("Acc-2 has-zero", "acc2_haszero", None, 2),
    ("F1 has-zero", "f1_haszero", None, 2),
)
RELIANCE = (("dMAE perm-A", "acoustic", "mae", 3), ("dMAE perm-V", "visual", "mae", 3))
OURS_PAPER_ROW = "Ours (paper)"


def row_ids(summary: dict) -> list[str]:
    """Table 1's rows that have runs, in the paper's order."""
    return [a for a in TABLE1_ORDER if a in summary["ablations"]]


def paper_row(summary: dict, row_id: str):
    """(the paper's row name, its values) that ``row_id`` is compared with, or (None, None)."""
    dataset = summary["dataset"]
    if dataset not in TABLE1:
        return None, None
    if row_id == FULL_MODEL_ID:
        name = OURS_PAPER_ROW
    elif is_baseline(row_id):
        suffix = backbone(summary["ablations"][row_id].get("text_model") or "")
        name = ROWS[row_id].baseline.paper_rows.get(suffix)
    else:
        return None, None
    return name, dict(TABLE1[dataset]).get(name)


def _cell(st: dict, decimals: int) -> str:
    """mean ± std [95% CI] (n/a where undefined)."""
    mean, std, ci = st.get("mean"), st.get("std"), st.get("ci95")
    if mean is None:
        return "n/a"
    text = f"{mean:.{decimals}f} ± " + ("n/a" if std is None else f"{std:.{decimals}f}")
    if ci is not None:
        text += f" [{ci[0]:.{decimals}f}, {ci[1]:.{decimals}f}]"
    return text


def runs_rows(summary: dict) -> list[dict]:
    """One flat record per Table 1 row (table1.csv)."""
    out = []
    for aid in row_ids(summary):
        entry = summary["ablations"][aid]
        name, paper = paper_row(summary, aid)
        rec = {"id": aid, "configuration": entry["label"], "text_model": entry.get("text_model", ""),
               "n_seeds": len(entry["seeds"]), "seeds": " ".join(str(s) for s in entry["seeds"]),
               "paper_row": name or ""}
        for _, key, field, _d in COLUMNS:
            st = _stat(summary, aid, key)
            ci = st.get("ci95") or (None, None)
            rec.update({f"{key}_mean": _num(st.get("mean")), f"{key}_std": _num(st.get("std")),
                        f"{key}_ci95_low": _num(ci[0]), f"{key}_ci95_high": _num(ci[1])})
            if field is not None:
                rec[f"{key}_paper"] = "" if paper is None else getattr(paper, field)
        for _, stream, key, _d in RELIANCE:
            st = _reliance_stat(summary, aid, stream, key)
            ci = st.get("ci95") or (None, None)
            prefix = f"reliance_{stream}_{key}"
            rec.update({f"{prefix}_mean": _num(st.get("mean")), f"{prefix}_std": _num(st.get("std")),
                        f"{prefix}_ci95_low": _num(ci[0]), f"{prefix}_ci95_high": _num(ci[1])})
        rec["av_not_learnt"] = learnt.csv_cell(entry.get("av_learnt"))
        out.append(rec)
    return out


def runs_csv(summary: dict) -> str:
    records = runs_rows(summary)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(records[0]) if records else ["id"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue()


def runs_markdown(summary: dict) -> str:
    dataset = summary["dataset"]
    lines = [f"# Table 1 from our runs on `{dataset}`: the baselines, T0 and {FULL_MODEL_ID}", ""]
    ids = row_ids(summary)
    if not ids:
        return "\n".join(lines + [f"No run of a Table 1 row ({', '.join(TABLE1_ORDER)}) was found.", ""])
    if dataset not in TABLE1:
        lines += [f"**The paper's numbers are for CMU-MOSI and CMU-MOSEI; ours are on `{dataset}`: the paper "
                  "columns stay empty.**", ""]
    lines += [CONVENTION_NOTE + " Cells: mean ± std [t 95% CI over seeds].", "", RELIANCE_NOTE, "",
              "The paper column is the row of the paper's Table 1 for the same text backbone (b: BERT-base, "
              "d: DeBERTa-v3); the paper does not say which Acc-2/F1 convention it used.", ""]
    cols = ["ID", "Method", "Seeds", "Paper row"]
    for label, _key, field, _d in COLUMNS:
        cols += [f"{label} (ours)"] + ([f"{label} (paper)"] if field else [])
    cols += [label for label, *_ in RELIANCE] + ["a/v not learnt (seeds)"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for aid in ids:
        entry = summary["ablations"][aid]
        name, paper = paper_row(summary, aid)
        mark = learnt.table1_suffix(entry.get("av_learnt"))
        cells = [aid, entry["label"] + mark, str(len(entry["seeds"])), name or "-"]
        for _label, key, field, d in COLUMNS:
            cells.append(_cell(_stat(summary, aid, key), d))
            if field:
                cells.append("-" if paper is None else f"{getattr(paper, field):.{d}f}")
        for _label, stream, key, d in RELIANCE:
            cells.append(_cell(_reliance_stat(summary, aid, stream, key), d))
        cells.append(learnt.table_cell(entry.get("av_learnt")))
        lines.append("| " + " | ".join(cells) + " |")
    others = [a for a in ids if a != FULL_MODEL_ID]
    return "\n".join(lines + learnt_footnote(summary, ids) + comparison_lines(summary, ids=others)) + "\n"
