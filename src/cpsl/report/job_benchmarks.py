"""The `benchmarks` rule (Snakemake only): one table of every benchmarked job's wall time and peak memory (train).

Snakemake writes one TSV per job (``benchmark:``, under logs/<dataset>/benchmarks/<stage>/<row>-seed<k>.tsv; columns
``s`` = wall seconds, ``max_rss`` = peak resident memory in MB, and more). This reads them and writes
reports/<dataset>/benchmarks.md: one line per job, then the totals per stage. DVC has no per-job benchmark, so the
report stage (shared by both engines) does not read these files.

    python3 -m cpsl.report.job_benchmarks OUT.md TSV...
"""
from __future__ import annotations

import csv
import math
import re
import sys
from pathlib import Path

from cpsl.errors import PipelineError
from cpsl.runtime.io_utils import write_text_atomic

NAME = re.compile(r"^(?P<row>.+)-seed(?P<seed>\d+)\.tsv$")


def _number(text: str | None) -> float | None:
    """A benchmark value; Snakemake writes '-' or NA where it could not measure (e.g. a job shorter than its
    sampling interval)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def read_benchmark(path: Path) -> dict:
    """stage, row, seed, seconds, peak MB of one job's TSV; a file that is not one is refused naming it."""
    match = NAME.match(path.name)
    if match is None:
        raise PipelineError(f"{path}: not a benchmark file of a job (<row>-seed<k>.tsv); rerun the job")
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PipelineError(f"{path}: cannot be read as Snakemake's benchmark TSV ({exc}); rerun the job") from None
    if not rows or "s" not in rows[-1]:
        raise PipelineError(f"{path}: no benchmark record (no 's' column); rerun the job")
    seconds = _number(rows[-1]["s"])
    if seconds is None:
        raise PipelineError(f"{path}: wall time 's' is {rows[-1]['s']!r}, not a number of seconds; rerun the job")
    return {"stage": path.parent.name, "row": match["row"], "seed": int(match["seed"]), "seconds": seconds,
            "peak_mb": _number(rows[-1].get("max_rss"))}


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def table(records: list[dict]) -> str:
    lines = ["# Job benchmarks (Snakemake `benchmark:`)", "",
             "Wall time and peak resident memory (max RSS) of each job; n/a: too short for Snakemake to sample.", "",
             "| stage | row | seed | wall time (s) | peak memory (MB) |", "|---|---|---:|---:|---:|"]
    records = sorted(records, key=lambda r: (r["stage"] != "train", r["stage"], r["row"], r["seed"]))
    lines += [f"| {r['stage']} | {r['row']} | {r['seed']} | {r['seconds']:.1f} | {_mb(r['peak_mb'])} |"
              for r in records]
    lines += ["", "| stage | jobs | total wall time (s) | longest job (s) | largest peak memory (MB) |",
              "|---|---:|---:|---:|---:|"]
    for stage in sorted({r["stage"] for r in records}, key=lambda s: (s != "train", s)):
        group = [r for r in records if r["stage"] == stage]
        peaks = [r["peak_mb"] for r in group if r["peak_mb"] is not None]
        lines.append(f"| {stage} | {len(group)} | {sum(r['seconds'] for r in group):.1f} | "
                     f"{max(r['seconds'] for r in group):.1f} | {_mb(max(peaks) if peaks else None)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) < 1:
        print("usage: python3 -m cpsl.report.job_benchmarks OUT.md TSV...", file=sys.stderr)
        return 2
    out, files = Path(argv[0]), [Path(a) for a in argv[1:]]
    try:
        write_text_atomic(out, table([read_benchmark(p) for p in files]))
    except PipelineError as exc:
        print(f"cpsl.report.job_benchmarks: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
