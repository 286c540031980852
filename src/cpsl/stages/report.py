"""Stage ``report``: aggregate the configured runs of a dataset into summary.json, Tables 1-2, Figures 2-3.

Reads only files: each run folder's metrics.json (the evaluate stage), predictions.csv (for the
paired bootstrap) and history.csv (for the figures). The runs read are exactly those both engines declare as
the report's inputs (:func:`configured_runs`): the configured rows (``ablations``; with ``--grid`` the whole
paper grid too) x ``train.seeds``, under ``results/<dataset>/``. Any other folder there (a leftover of an earlier
experiment, a run trained with other params) is never read, and is listed in one warning line; a configured run
without metrics.json is named in a warning (``--strict``: an error), and both lists go to summary.json.
Each run's metrics.json must record (``run``, written by evaluate) a checkpoint trained under these params for its
row and seed, and the training its folder holds now (train_summary.json's fingerprint): else one line names the
file and the differing keys (cpsl.formats.run_identity.check_metrics_run).

Writes ``reports/<dataset>/{summary.json, table1.md, table1.csv, table2.md, table2.csv, figure2_losses.png,
figure3_modulation.png, history_mean.csv, results.json}`` as one set (cpsl.report.output_set: all written into a staging
folder, then swapped in; ``out_dir`` replaces reports/<dataset>). Rows are
any row of cpsl.config.rows: Table 2 shows the CP+SL rows (cpsl.report.table2), Table 1 the baselines, T0 and A6
(cpsl.report.table1).

Statistics (cpsl.report.stats has the details): per ablation and metric, on test and valid, the mean,
std (ddof=1), a t 95% interval over seeds (null with one seed) and each seed's value; the full model A6
against every other configuration on their shared seeds, by a paired t-test over seeds AND a paired
bootstrap over test segments of the seed-averaged difference (:data:`N_RESAMPLES` resamples, fixed seed).
Figures (the CP+SL model's losses and modulation) use the first configured CP+SL row (``ablations``) that has
runs; else the full model, else the first CP+SL row that has runs, else the first row (the title names it).
Rows the paper lists twice (B1 = A1, C3 = A2, C4 = A5) are trained once; both labels are reported from the
same runs (``trained_as`` in summary.json). The modality-reliance deltas of cpsl evaluate are aggregated over
seeds like the metrics (``reliance``).
Per row, ``av_learnt`` counts the seeds whose acoustic/visual path did not learn (cpsl.metrics.av_learnt, the
verdict evaluate wrote to metrics.json; Tables 1-2 mark such rows and a line on stderr names the setting to
change), and ``modulation_vs_paper`` holds the per-epoch c_a, c_v and imbalance degree beside the paper's
Section 3.5 ranges with the share of the modulation window inside them (cpsl.report.telemetry; Figure 3 shades
the same ranges).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from cpsl.config import paths
from cpsl.config.ablations import labels_of
from cpsl.config.rows import ROWS, canonical, is_baseline, trained_rows
from cpsl.errors import PipelineError
from cpsl.formats import run_folder
from cpsl.formats.run_identity import check_metrics_run, check_rows_consistent, training_params
from cpsl.metrics import av_learnt
from cpsl.metrics.scores import METRIC_KEYS, json_safe
from cpsl.report import figures, output_set, results_metrics, stats, telemetry
from cpsl.report.metrics_schema import check_metrics
from cpsl.report.paper_results import FULL_MODEL_ID
from cpsl.report.table1 import write_table1
from cpsl.report.table2 import write_table2
from cpsl.runtime.io_utils import refuse_symlink, write_json_atomic

N_RESAMPLES = 5000
BOOTSTRAP_SEED = 20240527
SPLITS = ("test", "valid")
_RUN_NAME = re.compile(r"^(?P<ablation>[A-Z][A-Z0-9]*)-seed(?P<seed>\d+)$")


class ReportError(PipelineError, ValueError):
    """A malformed or inconsistent run folder; the message names the file."""


def load_run(folder: Path, dataset: str | None = None) -> dict:
    """One evaluated run: ablation, seed, metrics per split, selected epoch. Validates metrics.json
    (cpsl.report.metrics_schema)."""
    path = folder / run_folder.METRICS_FILE
    m = run_folder.read_metrics(folder)
    check_metrics(m, path)  # every key the report reads, before any is used (one line naming file and key)
    if dataset is not None and m.get("dataset", dataset) != dataset:
        raise ReportError(f"{path}: run of dataset {m['dataset']!r} inside the results of {dataset!r}")
    named = _RUN_NAME.match(folder.name)
    if named and (named["ablation"], int(named["seed"])) != (m["ablation"], m["seed"]):
        raise ReportError(f"{path}: says {m['ablation']}-seed{m['seed']} but the folder is {folder.name}")
    return {"folder": folder, "ablation": m["ablation"], "seed": m["seed"], "metrics": m,
            "selected_epoch": m.get("selected_epoch")}


def configured_runs(params: dict, grid: bool = False, table1: bool = False) -> list[str]:
    """The run folder names the report covers: each trained row (rows.trained_rows) x train.seeds, the same
    list the Snakefile declares as the report's inputs."""
    return [paths.run_dir(params["dataset"], row, seed).name
            for row in trained_rows(params["ablations"], grid, table1) for seed in params["train"]["seeds"]]


def discover_runs(results_dir: Path, dataset: str | None = None,
                  expected: list[str] | None = None) -> tuple[list[dict], list[str], list[str]]:
    """(evaluated runs among ``expected`` sorted by paper order then seed, expected folders without
    metrics.json, other sub-folders: never read). ``expected`` None: every sub-folder is expected."""
    if not results_dir.is_dir():
        raise ReportError(f"{results_dir}: results folder not found (run train and evaluate first)")
    present = sorted(p.name for p in results_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    expected = present if expected is None else list(expected)
    runs, missing = [], []
    for name in expected:
        refuse_symlink(results_dir / name, "run folder")  # a configured run is read from the project, never a link
        if run_folder.has_metrics(results_dir / name):
            runs.append(load_run(results_dir / name, dataset))
        else:
            missing.append(name)
    others = [name for name in present if name not in set(expected)]
    seen: dict[tuple, Path] = {}
    for r in runs:
        key = (r["ablation"], r["seed"])
        if key in seen:
            raise ReportError(f"{r['folder']} and {seen[key]} are both {key[0]} seed {key[1]}")
        seen[key] = r["folder"]
    order = list(ROWS)
    runs.sort(key=lambda r: (order.index(r["ablation"]), r["seed"]))
    return runs, missing, others


def _reliance(group: list[dict]) -> dict | None:
    """Per stream and metric, the permuted-minus-intact deltas of cpsl evaluate, described over seeds."""
    records = [r["metrics"].get("reliance") or {} for r in group]
    out = {}
    for stream in ("acoustic", "visual"):
        if not all(isinstance(rec.get(stream), dict) for rec in records):
            continue
        keys = sorted({k for rec in records for k in rec[stream]})
        out[stream] = {k: stats.describe({r["seed"]: rec[stream].get(k) for r, rec in zip(group, records)})
                       for k in keys}
    return out or None


def _histories(group: list[dict]) -> tuple[list[dict], list[int]]:
    """The columns of each run's history.csv that exists, and those runs' seeds."""
    paths = [(r["seed"], r["folder"] / run_folder.HISTORY_FILE) for r in group]
    found = [(seed, p) for seed, p in paths if p.is_file()]
    return [figures.columns(run_folder.read_history(p)) for _, p in found], [seed for seed, _ in found]


def _window(group: list[dict], gm: dict) -> tuple[int, int]:
    """The modulation window the row was trained with (its train_summary.json), else the current params'."""
    trained = training_params(group[0]["folder"]) or {}
    return (int(trained.get("gm.start_epoch", gm["start_epoch"])), int(trained.get("gm.end_epoch", gm["end_epoch"])))


def _aggregate(runs: list[dict], gm: dict) -> dict:
    by_ablation: dict[str, list[dict]] = {}
    for r in runs:
        by_ablation.setdefault(r["ablation"], []).append(r)
    out = {}
    for aid, group in by_ablation.items():
        entry = {"label": ROWS[aid].label, "seeds": [r["seed"] for r in group],
                 "runs": [r["folder"].name for r in group], "trained_as": aid,
                 "selected_epoch": {str(r["seed"]): r["selected_epoch"] for r in group}}
        text_model = _text_model(group)
        if text_model is not None:  # the backbone decides which of the paper's rows (b or d) a baseline faces
            entry["text_model"] = text_model
        for split in SPLITS:
            if not all(split in r["metrics"] for r in group):
                continue
            keys = [k for k in METRIC_KEYS if any(k in r["metrics"][split] for r in group)]
            entry[split] = {k: stats.describe({r["seed"]: r["metrics"][split].get(k) for r in group},
                                              bounds=stats.METRIC_BOUNDS.get(k)) for k in keys}
        reliance = _reliance(group)
        if reliance:
            entry["reliance"] = reliance
        entry["av_learnt"] = av_learnt.row_summary({r["seed"]: r["metrics"].get("learnt") for r in group})
        histories, seeds = _histories(group)
        if histories and not is_baseline(aid):  # the baselines have no modulation
            entry["modulation_vs_paper"] = telemetry.against_paper(histories, seeds, _window(group, gm))
        for row_id in labels_of(aid):  # the paper's duplicate rows share these runs
            out[row_id] = {**entry, "label": ROWS[row_id].label}
    return {a: out[a] for a in ROWS if a in out}


def _text_model(group: list[dict]) -> str | None:
    """The text model the row's runs were trained with (train_summary.json; None when not recorded)."""
    for r in group:
        try:
            summary = run_folder.read_summary(r["folder"])
        except run_folder.RunFolderError:
            continue
        if isinstance(summary, dict) and summary.get("text_model"):
            return str(summary["text_model"])
    return None


def _compare(runs: list[dict]) -> dict:
    ref_runs = {r["seed"]: r for r in runs if r["ablation"] == FULL_MODEL_ID}
    if not ref_runs:
        return {"reference": FULL_MODEL_ID, "vs": {},
                "note": f"no run of the full model {FULL_MODEL_ID}: no paired comparison"}
    others: dict[str, dict[int, dict]] = {}
    for r in runs:
        if r["ablation"] != FULL_MODEL_ID:
            others.setdefault(r["ablation"], {})[r["seed"]] = r
    pred_cache: dict[Path, dict] = {}

    def preds(run):
        if run["folder"] not in pred_cache:
            pred_cache[run["folder"]] = run_folder.read_predictions(run["folder"], "test")
        return pred_cache[run["folder"]]

    vs = {}
    for aid, seeds_runs in others.items():
        shared = sorted(set(ref_runs) & set(seeds_runs))
        entry: dict = {"shared_seeds": shared}
        if not shared:
            entry["note"] = f"no seed shared with {FULL_MODEL_ID}: not compared"
            vs[aid] = entry
            continue
        entry["paired_t_test_over_seeds"] = {
            "test": "paired t-test over seeds (scipy.stats.ttest_rel), reference - other",
            "metrics": {k: _strip(stats.paired_t_test({s: ref_runs[s]["metrics"]["test"].get(k) for s in shared},
                                                      {s: seeds_runs[s]["metrics"]["test"].get(k) for s in shared}))
                        for k in METRIC_KEYS},
        }
        ids = sorted(preds(ref_runs[shared[0]]))
        label = np.array([preds(ref_runs[shared[0]])[i][0] for i in ids])
        ref_p, oth_p = {}, {}
        for s in shared:
            for run, store in ((ref_runs[s], ref_p), (seeds_runs[s], oth_p)):
                table = preds(run)
                if set(table) != set(ids):
                    raise ReportError(f"{run['folder'] / 'predictions.csv'}: its test segments differ from "
                                      f"{ref_runs[shared[0]]['folder'] / 'predictions.csv'}")
                lab = np.array([table[i][0] for i in ids])
                if not np.allclose(lab, label):
                    raise ReportError(f"{run['folder'] / 'predictions.csv'}: test labels differ from "
                                      f"{ref_runs[shared[0]]['folder'] / 'predictions.csv'}")
                store[s] = np.array([table[i][1] for i in ids])
        entry["paired_bootstrap_over_test_segments"] = stats.paired_bootstrap(
            label, ref_p, oth_p, n_resamples=N_RESAMPLES, seed=BOOTSTRAP_SEED)
        vs[aid] = entry
    return {"reference": FULL_MODEL_ID, "direction": f"{FULL_MODEL_ID} minus the other configuration",
            "vs": {a: vs[a] for a in ROWS if a in vs}}


def _strip(t: dict) -> dict:
    """The per-metric t-test result without the repeated test description."""
    return {k: v for k, v in t.items() if k != "test"}


def _figure_ablation(params: dict, ablations: list[str]) -> str:
    """The row Figures 2-3 (the CP+SL model's losses and modulation) are drawn for: see the module docstring."""
    cpsl_rows = [a for a in ablations if not is_baseline(a)]
    for candidate in (*[a for a in params["ablations"] if not is_baseline(a)], FULL_MODEL_ID, *cpsl_rows):
        if candidate in ablations:
            return candidate
    return ablations[0]


def build_summary(params: dict, runs: list[dict], missing: list[str], others: list[str], results_dir: Path,
                  grid: bool = False, table1: bool = False) -> dict:
    dataset = params["dataset"]
    aggregated = _aggregate(runs, params["gm"])
    return {
        "dataset": dataset,
        "results_dir": str(results_dir),
        "primary_split": "test",
        "selection": "checkpoint selected on validation MAE (never on test)",
        "conventions": {
            "acc2_nonzero/f1_nonzero": "negative vs positive, zero-labelled segments left out (tables' primary)",
            "acc2_haszero/f1_haszero": "negative (<0) vs non-negative (>=0), all segments",
            "mae/corr": "all segments",
            "mae_nonzero_subset/corr_nonzero_subset": "non-zero-label segments only (some published code); "
                                                      "not comparable with mae/corr",
            "acc7/acc5": "clip to [-3,3]/[-2,2], round half away from zero",
            "units": "accuracies and F1 in percent; mae and corr raw",
        },
        "statistics": {
            "per_ablation": "mean, std (ddof=1), ci95 = t interval of the mean over seeds (null with 1 seed), "
                            "per-seed values",
            "paired_t_test_over_seeds": "scipy.stats.ttest_rel over the seeds shared with the reference, >= 2 seeds",
            "paired_bootstrap_over_test_segments": f"{N_RESAMPLES} resamples of test segments (rng seed "
                                                   f"{BOOTSTRAP_SEED}); per resample the seed-averaged difference "
                                                   "of the metric; percentile 95% interval; two-sided p",
        },
        "configured": {"ablations": list(params["ablations"]), "grid": grid, "table1": table1,
                       "seeds": list(params["train"]["seeds"]), "missing_runs": missing},
        "other_folders_not_read": others,
        "av_learnt_rule": av_learnt.RULE,
        "ablations": aggregated,
        "comparisons": _compare(runs),
    }


def _names(names: list[str], most: int = 8) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def run_report(params: dict, results_dir=None, out_dir=None, grid: bool = False, strict: bool = False,
               table1: bool = False) -> dict:
    """Aggregate, test, tabulate and plot the configured runs (``grid``: the whole paper grid too; ``table1``: T0,
    A6 and every Table 1 baseline too); return the summary dict (as written to summary.json). ``strict``: a
    configured run without metrics.json is an error."""
    dataset = params["dataset"]
    results_dir = Path(results_dir) if results_dir is not None else paths.results_dir(dataset)
    out_dir = Path(out_dir) if out_dir is not None else paths.reports_dir(dataset)
    # summary.json lives with the reports (paths.summary_path): the stage depends on the whole results
    # folder and may not write inside its own dependency.
    summary_file = out_dir / paths.summary_path(dataset).name
    runs, missing, others = discover_runs(results_dir, dataset, configured_runs(params, grid, table1))
    if others:
        print(f"cpsl report: warning: {results_dir}: {len(others)} folder(s) not among the configured runs, not "
              f"read: {_names(others)}", file=sys.stderr)
    if missing and strict:
        raise ReportError(f"{results_dir}: configured run(s) without metrics.json: {_names(missing)}; train and "
                          f"evaluate them, or leave them out of ablations / train.seeds")
    if missing:
        print(f"cpsl report: warning: {results_dir}: configured run(s) without metrics.json, left out of the "
              f"report: {_names(missing)} (--strict makes this an error)", file=sys.stderr)
    check_rows_consistent(runs)  # never average seeds trained with different params
    for run in runs:  # never report metrics of a checkpoint of other params, or of an earlier training
        check_metrics_run(run["folder"], run["metrics"], params)
    if not runs:
        raise ReportError(f"{results_dir}: no run folder holds metrics.json among the configured runs "
                          f"({_names(missing)}); run 'cpsl evaluate' first")
    summary = json_safe(build_summary(params, runs, missing, others, results_dir, grid, table1))

    fig_id = canonical(_figure_ablation(params, list(summary["ablations"])))
    hist_paths = [r["folder"] / run_folder.HISTORY_FILE for r in runs if r["ablation"] == fig_id]
    no_history = [str(p) for p in hist_paths if not p.is_file()]
    if no_history:
        raise ReportError(f"{', '.join(no_history)}: missing (Figures 2-3 are drawn from each run's history.csv)")
    histories = [figures.columns(run_folder.read_history(p)) for p in hist_paths]
    seeds = [r["seed"] for r in runs if r["ablation"] == fig_id]
    summary["figures"] = {"ablation": fig_id, "seeds": seeds}
    # every output into a staging folder, swapped in as one set: a kill leaves the old report or the new one
    with output_set.staged_set(out_dir, (summary_file.name, *paths.REPORT_FILES)) as staged:
        write_table2(summary, staged)  # table2 first, as before: a write fault names reports/<dataset>/table2.md
        write_table1(summary, staged)
        figures.write_figures(histories, staged, f"{dataset}, {fig_id} ({ROWS[fig_id].label}), mean over seeds "
                                                 f"{', '.join(map(str, seeds))}",
                              against=summary["ablations"][fig_id].get("modulation_vs_paper"))
        write_json_atomic(staged / summary_file.name, summary)
        # DVC's metrics: the few results per row experiments are compared by
        write_json_atomic(staged / paths.RESULTS_METRICS_FILE, results_metrics.flat_results(summary))
    _warn_not_learnt(summary)
    return summary


def _warn_not_learnt(summary: dict) -> None:
    """One stderr line naming the rows with seeds whose a/v path did not learn, and the setting to change."""
    rows = [f"{aid} ({e['av_learnt']['n_marked']}/{e['av_learnt']['n_seeds']} seeds)"
            for aid, e in summary["ablations"].items() if (e.get("av_learnt") or {}).get("n_marked")
            and e.get("trained_as", aid) == aid]
    if rows:
        print(f"cpsl report: warning: the acoustic/visual path did not learn in {', '.join(rows)}; "
              f"{av_learnt.HINT}", file=sys.stderr)
