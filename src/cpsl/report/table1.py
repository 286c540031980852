"""Table 1 from our own runs: the Table 1 baselines (cpsl.config.rows: MAG, ...), the text-only reference T0 and the
full
model A6, trained on the same cache, folds, seeds and selection, each beside the paper's number.

Per row and metric (test split): mean ± std (ddof=1) and the t 95% interval over seeds (cpsl.report.stats.describe),
for Acc-2 and F1 in both conventions, MAE, Corr and the modality-reliance deltas (dMAE with the acoustic / visual
stream permuted). The paper's number is the row of ``paper_results.TABLE1`` for the dataset: "Ours (paper)" for A6,
and for a baseline the row of its text backbone (``BaselineSpec.paper_rows``: "d" for a DeBERTa text model, "b" for
BERT-base, as the paper names them); none on the demo or for another backbone (e.g. the demo's MiniLM). The paper
does not say which Acc-2/F1 convention its rows use: its numbers stand beside our non-zero ones. Then the paired
comparisons of A6 with each of these rows, the same tests as Table 2 (summary.json ``comparisons``), and then the
paper's Table 1 itself with our A6 beside its rows. All of Table 1 is here; what it shares with Table 2 is in
:mod:`cpsl.report.table_parts`.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from cpsl.config.rows import BASELINE_IDS, ROWS, backbone, is_baseline
from cpsl.metrics import av_learnt
from cpsl.report.paper_results import FULL_MODEL_ID, TABLE1
from cpsl.report.table_parts import (
    CONVENTION_NOTE,
    RELIANCE_NOTE,
    comparison_lines,
    fmt,
    learnt_footnote,
    num,
    reliance_stat,
    stat,
)
from cpsl.runtime.io_utils import write_text_atomic

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
            st = stat(summary, aid, key)
            ci = st.get("ci95") or (None, None)
            rec.update({f"{key}_mean": num(st.get("mean")), f"{key}_std": num(st.get("std")),
                        f"{key}_ci95_low": num(ci[0]), f"{key}_ci95_high": num(ci[1])})
            if field is not None:
                rec[f"{key}_paper"] = "" if paper is None else getattr(paper, field)
        for _, stream, key, _d in RELIANCE:
            st = reliance_stat(summary, aid, stream, key)
            ci = st.get("ci95") or (None, None)
            prefix = f"reliance_{stream}_{key}"
            rec.update({f"{prefix}_mean": num(st.get("mean")), f"{prefix}_std": num(st.get("std")),
                        f"{prefix}_ci95_low": num(ci[0]), f"{prefix}_ci95_high": num(ci[1])})
        rec["av_not_learnt"] = av_learnt.csv_cell(entry.get("av_learnt"))
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
        mark = av_learnt.table1_suffix(entry.get("av_learnt"))
        cells = [aid, entry["label"] + mark, str(len(entry["seeds"])), name or "-"]
        for _label, key, field, d in COLUMNS:
            cells.append(_cell(stat(summary, aid, key), d))
            if field:
                cells.append("-" if paper is None else f"{getattr(paper, field):.{d}f}")
        for _label, stream, key, d in RELIANCE:
            cells.append(_cell(reliance_stat(summary, aid, stream, key), d))
        cells.append(av_learnt.table_cell(entry.get("av_learnt")))
        lines.append("| " + " | ".join(cells) + " |")
    others = [a for a in ids if a != FULL_MODEL_ID]
    return "\n".join(lines + learnt_footnote(summary, ids) + comparison_lines(summary, ids=others)) + "\n"


def _paper_block(title: str, rows: list[tuple[str, tuple]], ours: list[str] | None) -> list[str]:
    out = [f"### {title}", "", "| Method | Acc-2 | F1 | MAE | Corr |", "|---|---|---|---|---|"]
    for name, r in rows:
        out.append(f"| {name} | {r.acc2:.2f} | {r.f1:.2f} | {r.mae:.3f} | {r.corr:.3f} |")
    if ours:
        out.append("| " + " | ".join(ours) + " |")
    return out + [""]


def paper_markdown(summary: dict) -> str:
    """The paper's Table 1 with our full model's row beside its rows (the second part of table1.md)."""
    dataset = summary["dataset"]
    lines = [f"## The paper's Table 1 - our full model ({FULL_MODEL_ID}) on `{dataset}` beside the paper's rows", ""]
    ours = None
    if FULL_MODEL_ID in summary["ablations"]:
        n = len(summary["ablations"][FULL_MODEL_ID]["seeds"])
        mark = av_learnt.table1_suffix(summary["ablations"][FULL_MODEL_ID].get("av_learnt"))
        ours = [f"**Ours (this reproduction, {n} seed{'s' if n != 1 else ''})**{mark}"]
        for key, d in (("acc2_nonzero", 2), ("f1_nonzero", 2), ("mae", 3), ("corr", 3)):
            st = stat(summary, FULL_MODEL_ID, key)
            ours.append(fmt(st.get("mean"), st.get("std"), d))
        hz = [fmt(stat(summary, FULL_MODEL_ID, k).get("mean"), stat(summary, FULL_MODEL_ID, k).get("std"), 2)
              for k in ("acc2_haszero", "f1_haszero")]
        conv = (f"{CONVENTION_NOTE} Has-zero for our row: Acc-2 {hz[0]}, F1 {hz[1]}. "
                "Paper rows are copied from its Table 1; their conventions are those of the cited works.")
    else:
        conv = f"No run of the full model {FULL_MODEL_ID} was found; only the paper's rows are listed."
    lines += [conv, ""]
    if dataset in TABLE1:
        lines += _paper_block(f"CMU-{dataset.upper()}", TABLE1[dataset], ours)
    else:
        lines += [f"**The paper's rows below are for CMU-MOSI and CMU-MOSEI; ours are on `{dataset}`. "
                  "They are NOT comparable: they are listed only for the table's layout.**", ""]
        if ours:
            lines += [f"### Ours on `{dataset}`", "", "| Method | Acc-2 | F1 | MAE | Corr |", "|---|---|---|---|---|",
                      "| " + " | ".join(ours) + " |", ""]
        for name in ("mosi", "mosei"):
            lines += _paper_block(f"CMU-{name.upper()} (paper)", TABLE1[name], None)
    lines += learnt_footnote(summary, [FULL_MODEL_ID])
    return "\n".join(lines).rstrip() + "\n"


def write_table1(summary: dict, out_dir) -> list[str]:
    """Write table1.md (Table 1 from runs, then the paper's Table 1 beside our A6) and table1.csv atomically into
    ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    written = []
    markdown = runs_markdown(summary) + "\n" + paper_markdown(summary)
    for name, text in (("table1.md", markdown), ("table1.csv", runs_csv(summary))):
        write_text_atomic(out_dir / name, text)
        written.append(str(out_dir / name))
    return written
