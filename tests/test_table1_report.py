"""Table 1 from runs (cpsl.report.table1) and the workflow that trains its rows (`--config table1=true`).

On synthetic run folders of A6, T0 and MAG (metrics from the real metric code, as in test_report_stage.py):
table1.csv/.md hold each row's mean, std and t 95% CI over seeds for both Acc-2 conventions, F1, MAE, Corr and the
reliance deltas, the paper's number of the row for the same text backbone beside ours (MAG (d) for DeBERTa, MAG (b)
for BERT-base), and the paired comparisons of A6 with each row; Table 2 keeps the CP+SL rows only; a baseline
whose seeds were trained with different params is refused as any row is.
"""
from __future__ import annotations

import copy
import csv
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from scipy import stats as sps
from test_report_stage import SEEDS, _labels, make_run
from train_helpers import REPO

from cpsl.config.rows import TABLE1_IDS
from cpsl.config.schema import load_params
from cpsl.formats.run_identity import MixedParamsError
from cpsl.report.paper_results import TABLE1
from cpsl.stages.report import run_report


def _summary(folder, params, text_model):
    (folder / "train_summary.json").write_text(json.dumps({"params": params, "text_model": text_model}))


def _grid(root, text_model="microsoft/deberta-v3-base"):
    params = load_params(REPO / "params.yaml")
    params["dataset"] = "mosi"
    rng = np.random.default_rng(7)
    labels = {"valid": _labels(rng, 12), "test": _labels(rng, 30)}
    metrics = {}
    for row, noise in (("A6", 0.4), ("T0", 1.2), ("MAG", 0.7)):
        for seed in SEEDS:
            folder, m = make_run(root / "res", row, seed, noise, labels, dataset="mosi")
            m["reliance"] = {"acoustic": {"mae": 0.01 * seed}, "visual": {"mae": 0.1 + 0.01 * seed}, "permutations": 5}
            (folder / "metrics.json").write_text(json.dumps(m))
            _summary(folder, {"beta_shift": 1.0} if row == "MAG" else {"cp": 0.5}, text_model)
            metrics[(row, seed)] = m
    params["ablations"], params["train"]["seeds"] = ["A6", "T0", "MAG"], list(SEEDS)
    return params, metrics


def test_table1_from_runs_with_the_papers_numbers_and_paired_comparisons(tmp_path):
    params, metrics = _grid(tmp_path)
    summary = run_report(params, results_dir=tmp_path / "res", out_dir=tmp_path / "rep")
    with open(tmp_path / "rep" / "table1.csv") as fh:
        table = {r["id"]: r for r in csv.DictReader(fh)}
    assert list(table) == ["MAG", "T0", "A6"]  # the paper's order: baselines, then ours
    acc = np.array([metrics[("MAG", s)]["test"]["acc2_nonzero"] for s in SEEDS])
    half = sps.t.ppf(0.975, 2) * acc.std(ddof=1) / np.sqrt(3)
    mag = table["MAG"]
    assert float(mag["acc2_nonzero_mean"]) == pytest.approx(acc.mean(), abs=1e-5)
    assert float(mag["acc2_nonzero_std"]) == pytest.approx(acc.std(ddof=1), abs=1e-5)
    assert float(mag["acc2_nonzero_ci95_low"]) == pytest.approx(max(0.0, acc.mean() - half), abs=1e-5)
    haszero = np.mean([metrics[("MAG", s)]["test"]["acc2_haszero"] for s in SEEDS])
    assert float(mag["acc2_haszero_mean"]) == pytest.approx(haszero, abs=1e-5)
    assert float(mag["reliance_visual_mae_mean"]) == pytest.approx(0.1 + 0.01 * np.mean(SEEDS))
    paper = dict(TABLE1["mosi"])
    assert mag["paper_row"] == "MAG (d)" and float(mag["acc2_nonzero_paper"]) == paper["MAG (d)"].acc2
    assert float(table["A6"]["mae_paper"]) == paper["Ours (paper)"].mae and table["T0"]["acc2_nonzero_paper"] == ""
    md = (tmp_path / "rep" / "table1.md").read_text()
    mag_line = next(line for line in md.splitlines() if line.startswith("| MAG |"))
    assert f"{acc.mean():.2f} ± {acc.std(ddof=1):.2f} [" in mag_line and "| 86.10 |" in mag_line
    assert "A6 minus each configuration" in md and re.search(r"^\| MAG \| 0 2 10 \|", md, re.M)
    assert "ITHP" in md  # the paper's full Table 1 follows
    # the comparison is the same as Table 2's, and Table 2 keeps the CP+SL rows only
    vs = summary["comparisons"]["vs"]["MAG"]
    assert vs["paired_t_test_over_seeds"]["metrics"]["mae"]["p"] is not None
    with open(tmp_path / "rep" / "table2.csv") as fh:
        assert [r["id"] for r in csv.DictReader(fh)] == ["A6", "T0"]


def test_a_bert_backbone_faces_the_papers_b_row_and_the_demo_none(tmp_path):
    params, _ = _grid(tmp_path, text_model="bert-base-uncased")
    run_report(params, results_dir=tmp_path / "res", out_dir=tmp_path / "rep")
    with open(tmp_path / "rep" / "table1.csv") as fh:
        mag = next(r for r in csv.DictReader(fh) if r["id"] == "MAG")
    assert mag["paper_row"] == "MAG (b)" and float(mag["mae_paper"]) == dict(TABLE1["mosi"])["MAG (b)"].mae


def test_a_baseline_trained_with_mixed_params_is_refused(tmp_path):
    params, _ = _grid(tmp_path)
    _summary(tmp_path / "res" / "MAG-seed2", {"beta_shift": 0.5}, "microsoft/deberta-v3-base")
    with pytest.raises(MixedParamsError, match=r"MAG-seed0 and .*MAG-seed2 are both MAG .*beta_shift"):
        run_report(params, results_dir=tmp_path / "res", out_dir=tmp_path / "rep")


def test_snakemake_table1_trains_t0_a6_and_every_baseline_over_the_seeds(tmp_path):
    work = tmp_path / "wf"
    work.mkdir()
    for name in ("Snakefile", "params.yaml", "workflow", "src"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, work / name)
    proc = subprocess.run(["snakemake", "-n", "-p", "--cores", "1", "--forceall", "--config", "table1=true"],
                          cwd=work, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    trained = re.findall(r"cpsl train --ablation (\w+) --seed (\d+)", proc.stdout)
    seeds = load_params(REPO / "params.yaml")["train"]["seeds"]
    assert sorted(trained) == sorted((row, str(s)) for row in TABLE1_IDS for s in seeds)
    assert len(re.findall(r"cpsl evaluate --run results/demo/MAG-seed\d+", proc.stdout)) == len(seeds)


def test_the_report_reads_a_baseline_row_folder_name(tmp_path):
    params, _ = _grid(tmp_path)
    bad = copy.deepcopy(json.loads((tmp_path / "res" / "MAG-seed0" / "metrics.json").read_text()))
    bad["seed"] = 1
    (tmp_path / "res" / "MAG-seed0" / "metrics.json").write_text(json.dumps(bad))
    with pytest.raises(Exception, match=r"MAG-seed0.metrics\.json: says MAG-seed1"):
        run_report(params, results_dir=tmp_path / "res", out_dir=tmp_path / "rep")


def test_a_baseline_whose_av_path_learnt_nothing_is_marked_in_table1(tmp_path):
    """MAG's seeds all marked by evaluate (cpsl.metrics.av_learnt): its Table 1 row carries the mark, the count of
    marked seeds and the footnote; the unmarked rows do not."""
    params, metrics = _grid(tmp_path)
    for seed in SEEDS:
        for row, status in (("MAG", "not_learnt"), ("A6", "learnt"), ("T0", "not_applicable")):
            m = metrics[(row, seed)]
            m["learnt"] = {"status": status, "av_not_learnt": status == "not_learnt"}
            (tmp_path / "res" / f"{row}-seed{seed}" / "metrics.json").write_text(json.dumps(m))
    run_report(params, results_dir=tmp_path / "res", out_dir=tmp_path / "rep")
    with open(tmp_path / "rep" / "table1.csv") as fh:
        table = {r["id"]: r for r in csv.DictReader(fh)}
    assert (table["MAG"]["av_not_learnt"], table["A6"]["av_not_learnt"], table["T0"]["av_not_learnt"]) == \
        (f"{len(SEEDS)}/{len(SEEDS)}", f"0/{len(SEEDS)}", "n/a")
    md = (tmp_path / "rep" / "table1.md").read_text()
    mag_line = next(line for line in md.splitlines() if line.startswith("| MAG |"))
    a6_line = next(line for line in md.splitlines() if line.startswith("| A6 |"))
    assert "† |" in mag_line.split("|")[2] + "|" and "†" not in a6_line
    header = next(line for line in md.splitlines() if line.startswith("| ID"))
    assert header.rstrip(" |").endswith("a/v not learnt (seeds)")
    assert "† a/v not learnt" in md
