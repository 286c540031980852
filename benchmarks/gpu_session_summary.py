"""The one table of a device session (benchmarks/gpu_session.sh): every result file in a folder, printed as Markdown.

    python benchmarks/gpu_session_summary.py gpu_results/

bench_gpu cases make one table (ablation, precision, execution.step and the mode that really ran, AdamW kernels,
graph scope, steps/s, speed-up over the eager case of the same ablation and precision, MOSI epoch time, peak GPU
memory, error); the other results (gpu_check_train, bench_grid_throughput, any step added later) one line each;
then every step that left no result, with its exit line. Reads only; needs no torch.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _num(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "-"


def bench_table(cases: dict[str, dict]) -> list[str]:
    eager = {(c["ablation"], c["precision"]): c.get("steps_per_s") for c in cases.values()
             if c["step"] == "eager" and c["optimizer"] == "foreach"}
    lines = ["| case | ablation | precision | execution.step | ran as | AdamW | graph scope | steps/s | x eager "
             "| MOSI epoch s | peak GiB | error |", "|---|---|---|---|---|---|---|---:|---:|---:|---:|---|"]
    for name, c in cases.items():
        rate, base = c.get("steps_per_s"), eager.get((c["ablation"], c["precision"]))
        ratio = rate / base if isinstance(rate, float) and isinstance(base, float) else None
        error = (c.get("error") or "").replace("|", "/")
        if error:
            error = f"{error[:160]} (at {c.get('stage')})"
        lines.append(f"| {name} | {c['ablation']} | {c['precision']} | {c['step']} | {c.get('ran_as', '-')} "
                     f"| {c['optimizer']} | {c['scope']} | {_num(rate, '.2f')} | {_num(ratio, '.2f')} "
                     f"| {_num(c.get('epoch_s_1284_segments'), '.1f')} | {_num(c.get('peak_gpu_mem_GiB'), '.2f')} "
                     f"| {error} |")
    return lines


def other_line(name: str, result: dict) -> str:
    if "runs" in result and "ok" in result:  # gpu_check_train
        ran = ", ".join(f"{r['step']}{' bf16' if r['bf16'] else ''} ran as {r['ran_as']}: "
                        f"{'ok' if r['ok'] else 'FAILED'}" for r in result["runs"] if "step" in r)
        return f"- {name}: {'ok' if result['ok'] else 'FAILED'} ({ran})"
    if isinstance(result.get("rows"), dict):  # bench_baselines: per row, per execution.step mode
        parts = []
        for row, entry in result["rows"].items():
            modes = ", ".join(f"{mode} {m['median_step_s'] * 1e3:.0f} ms (ran as {m.get('ran_as', mode)})"
                              for mode, m in entry.items() if isinstance(m, dict) and "median_step_s" in m)
            memory = entry.get("memory") or {}
            peak = memory.get("cuda_peak_allocated_mb", memory.get("peak_rss_mb"))
            ratio = _num(entry.get("step_time_vs_A6"), ".2f")
            parts.append(f"{row}: {modes}; x A6 {ratio}; peak {_num(peak, '.0f')} MB")
        return f"- {name} ({result.get('text_model')}, {result.get('device')}): " + " | ".join(parts)
    if "rows" in result:  # bench_grid_throughput
        rows = ", ".join(f"K={r['jobs']}: {r['steps_per_s_total']:.1f} steps/s, {r['runs_per_hour']:.1f} runs/h"
                         for r in result["rows"])
        return f"- {name}: {rows} ({', '.join(result.get('overrides') or ['execution.step auto'])})"
    scalars = {k: v for k, v in result.items() if isinstance(v, (str, int, float, bool)) and len(str(v)) < 60}
    return f"- {name}: " + ", ".join(f"{k}={v}" for k, v in list(scalars.items())[:8])


def summarise(folder: Path) -> str:
    cases, others, unreadable = {}, [], []
    for path in sorted(folder.glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            unreadable.append(f"- {path.stem}: unreadable result ({exc})")
            continue
        if isinstance(result, dict) and result.get("kind") == "bench_gpu_case":
            cases[path.stem] = result
        elif isinstance(result, dict):
            others.append(other_line(path.stem, result))
    exits = (folder / "exits.txt").read_text().splitlines() if (folder / "exits.txt").is_file() else []
    have = set(cases) | {p.stem for p in folder.glob("*.json")}
    missing = [f"- {line}" for line in exits if line.split(":")[0] not in have]
    lines = [f"# device session: {folder}"]
    for extra in ("versions.txt", "gpu.csv"):
        if (folder / extra).is_file():
            lines.append(f"{extra}: {' '.join((folder / extra).read_text().split())}")
    if cases:
        lines += ["", *bench_table(cases)]
    if others:
        lines += ["", *others]
    if missing or unreadable:
        lines += ["", "Steps without a result:", *missing, *unreadable]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: gpu_session_summary.py RESULTS_FOLDER", file=sys.stderr)
        return 2
    print(summarise(Path(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
