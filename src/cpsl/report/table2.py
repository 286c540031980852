"""Table 2 of the paper (the ablation grid, the CP+SL rows), with our seed-aggregated numbers beside the published
ones: table2.md and table2.csv.

The conventions both tables share (non-zero Acc-2/F1, mean +/- std over seeds, reliance, the a/v mark) are in
:mod:`cpsl.report.table_parts`. Table 2's own choices (the paper is silent on them):
* Corr is x100 (as the paper prints it in Table 2).
* T0 (text only) is ours and has no paper values; the paper's duplicate rows (B1 = A1, C3 = A2, C4 = A5)
  are the same runs under both labels.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from cpsl.config.ablations import ABLATIONS
from cpsl.metrics import av_learnt
from cpsl.report.paper_results import TABLE2, TABLE2_CORR_SCALE, TABLE2_DATASET
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
from cpsl.runtime.io_utils import spreadsheet_text, write_text_atomic

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


def _paper(aid: str):
    """(configuration label, paper values or None): T0 is ours and has no paper row."""
    if aid in TABLE2:
        return TABLE2[aid]
    return ABLATIONS[aid][1], None


def _configuration(summary: dict, aid: str) -> str:
    label = _paper(aid)[0]
    trained_as = summary["ablations"][aid].get("trained_as", aid)
    return label if trained_as == aid else f"{label} (same runs as {trained_as})"


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
            st = stat(summary, aid, key)
            short = field if field != "corr" else "corr_x100"
            row[f"{short}_mean"] = num(st.get("mean"), scale)
            row[f"{short}_std"] = num(st.get("std"), scale)
            row[f"{short}_paper"] = "" if paper is None else getattr(paper, field)
        for _, key, _d in HASZERO_COLUMNS:
            st = stat(summary, aid, key)
            row[f"{key}_mean"] = num(st.get("mean"))
            row[f"{key}_std"] = num(st.get("std"))
        for _, stream, key, _d in RELIANCE_COLUMNS:
            st = reliance_stat(summary, aid, stream, key)
            row[f"reliance_{stream}_{key}_mean"] = num(st.get("mean"))
            row[f"reliance_{stream}_{key}_std"] = num(st.get("std"))
        row["av_not_learnt"] = av_learnt.csv_cell(entry.get("av_learnt"))
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
            st = stat(summary, aid, key)
            cells += [fmt(st.get("mean"), st.get("std"), d, scale),
                      "-" if paper is None else f"{getattr(paper, field):.{d}f}"]
        for _, key, d in HASZERO_COLUMNS:
            st = stat(summary, aid, key)
            cells.append(fmt(st.get("mean"), st.get("std"), d))
        for _, stream, key, d in RELIANCE_COLUMNS:
            st = reliance_stat(summary, aid, stream, key)
            cells.append(fmt(st.get("mean"), st.get("std"), d))
        cells.append(av_learnt.table_cell(entry.get("av_learnt")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(head + lines + learnt_footnote(summary, ordered_ids(summary)) + comparison_lines(summary)) + "\n"


def write_table2(summary: dict, out_dir) -> list[str]:
    """Write table2.md and table2.csv atomically into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    written = []
    for name, text in (("table2.md", table2_markdown(summary)), ("table2.csv", table2_csv(summary))):
        write_text_atomic(out_dir / name, text)
        written.append(str(out_dir / name))
    return written
