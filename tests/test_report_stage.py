"""The report stage on synthetic run folders (metrics.json, predictions.csv, history.csv)."""
import copy
import csv
import json

import numpy as np
import pytest
import yaml
from scipy import stats as sps

from cpsl.config.names import LOSS_TERMS
from cpsl.config.schema import load_params, validate_params
from cpsl.formats import run_identity
from cpsl.metrics.scores import compute_metrics, json_safe
from cpsl.report.paper_results import TABLE2
from cpsl.stages.report import ReportError, run_report

SEEDS = (0, 2, 10)  # 10 sorts before 2 as text: the report must order seeds numerically
HISTORY_COLS = (["epoch"] + [f"{s}/{t}" for s in ("train", "valid") for t in LOSS_TERMS]
                + ["valid/mae", "valid/corr", "gm/c_a", "gm/c_v", "gm/g_a", "gm/g_v", "gm/imbalance", "gm/conflicts"])


@pytest.fixture(scope="module")
def base_params():
    with open("params.yaml") as fh:
        return validate_params(yaml.safe_load(fh))


def _labels(rng, n):
    lab = np.round(rng.uniform(-3, 3, n) * 3) / 3
    lab[:3] = 0.0
    return lab.astype(np.float32)


def run_record(ablation, seed, params=None, dataset="demo"):
    """metrics.json's "run" as evaluate writes it for a run trained under ``params`` (default: the repository's
    params.yaml with ``dataset``): the checkpoint's identity and fingerprint (cpsl.formats.run_identity)."""
    if params is None:
        params = load_params("params.yaml")
        params["dataset"] = dataset
    identity = run_identity.identity(params, ablation, seed, cache={"sha256": "synthetic"}, code="synthetic")
    return {"fingerprint": run_identity.fingerprint(identity), "identity": identity}


def make_run(root, ablation, seed, noise, labels, dataset="demo", epochs=4):
    """A run folder as train + evaluate leave it; metrics come from the real metric code."""
    rng = np.random.default_rng(1000 * seed + len(ablation) + int(noise * 100))
    folder = root / f"{ablation}-seed{seed}"
    folder.mkdir(parents=True)
    metrics = {"ablation": ablation, "seed": seed, "dataset": dataset, "selected_epoch": 2,
               "run": run_record(ablation, seed, dataset=dataset)}
    rows = []
    for split, lab in labels.items():
        pred = (lab + rng.normal(0, noise, lab.size)).astype(np.float32)
        metrics[split] = compute_metrics(pred, lab)
        rows += [(split, f"vid{i // 3}[{i % 3}]", float(y), float(p)) for i, (y, p) in enumerate(zip(lab, pred))]
    (folder / "metrics.json").write_text(json.dumps(json_safe(metrics)))
    with open(folder / "predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["split", "segment_id", "label", "prediction"])
        w.writerows(rows)
    with open(folder / "history.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(HISTORY_COLS)
        for ep in range(epochs):
            w.writerow([ep] + [round(1.0 / (ep + 1) + 0.01 * seed + 0.001 * k, 5)
                               for k in range(len(HISTORY_COLS) - 1)])
    return folder, metrics


@pytest.fixture(scope="module")
def grid(tmp_path_factory, base_params):
    root = tmp_path_factory.mktemp("results")
    rng = np.random.default_rng(0)
    labels = {"valid": _labels(rng, 20), "test": _labels(rng, 45)}
    metrics = {}
    for ablation, noise in (("A6", 0.3), ("A0", 1.2)):
        for seed in SEEDS:
            metrics[(ablation, seed)] = make_run(root, ablation, seed, noise, labels)[1]
    (root / "A6-seed99").mkdir()  # a folder of a seed not configured: never read
    out = tmp_path_factory.mktemp("reports")
    params = copy.deepcopy(base_params)
    params["ablations"], params["train"]["seeds"] = ["A6", "A0", "T0"], list(SEEDS)
    summary = run_report(params, results_dir=root, out_dir=out)
    return root, out, summary, metrics


def test_summary_values_over_seeds(grid):
    root, out, summary, metrics = grid
    on_disk = json.loads((out / "summary.json").read_text())
    assert not (root / "summary.json").exists()  # never inside the results folder the stage reads
    assert on_disk["ablations"].keys() == {"A0", "A6"}
    a6 = on_disk["ablations"]["A6"]
    assert a6["seeds"] == [0, 2, 10]
    vals = np.array([metrics[("A6", s)]["test"]["mae"] for s in SEEDS])
    mae = a6["test"]["mae"]
    assert mae["mean"] == pytest.approx(vals.mean()) and mae["std"] == pytest.approx(vals.std(ddof=1))
    assert mae["ci95"] == pytest.approx(list(sps.t.interval(0.95, 2, loc=vals.mean(), scale=sps.sem(vals))))
    assert mae["per_seed"]["10"] == pytest.approx(metrics[("A6", 10)]["test"]["mae"])
    assert "valid" in a6 and "acc7" in a6["test"] and "corr_nonzero_subset" in a6["test"]
    assert on_disk["other_folders_not_read"] == ["A6-seed99"]
    # configured: A6, A0, T0 x seeds 0, 2, 10; T0 was not trained
    assert on_disk["configured"]["missing_runs"] == ["T0-seed0", "T0-seed2", "T0-seed10"]


def test_paired_comparisons(grid):
    _root, _out, summary, metrics = grid
    comp = summary["comparisons"]
    assert comp["reference"] == "A6" and list(comp["vs"]) == ["A0"]
    c = comp["vs"]["A0"]
    assert c["shared_seeds"] == [0, 2, 10]
    a = [metrics[("A6", s)]["test"]["acc2_nonzero"] for s in SEEDS]
    b = [metrics[("A0", s)]["test"]["acc2_nonzero"] for s in SEEDS]
    t = c["paired_t_test_over_seeds"]
    assert "ttest_rel" in t["test"]
    assert t["metrics"]["acc2_nonzero"]["p"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    boot = c["paired_bootstrap_over_test_segments"]
    assert "bootstrap" in boot["test"] and boot["n_segments"] == 45
    mae = boot["metrics"]["mae"]
    want = np.mean([metrics[("A6", s)]["test"]["mae"] - metrics[("A0", s)]["test"]["mae"] for s in SEEDS])
    assert mae["diff"] == pytest.approx(want, rel=1e-5)
    assert mae["ci95"][0] <= mae["diff"] <= mae["ci95"][1] < 0  # A6 is much less noisy


def test_tables(grid):
    _root, out, _summary, metrics = grid
    with open(out / "table2.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == ["A0", "A6"]  # the paper's order
    a6 = rows[1]
    assert a6["configuration"] == "Full Model (Ours)" and a6["n_seeds"] == "3"
    assert float(a6["acc2_paper"]) == TABLE2["A6"][1].acc2 and float(a6["corr_x100_paper"]) == 86.44
    corr = [metrics[("A6", s)]["test"]["corr"] for s in SEEDS]
    assert float(a6["corr_x100_mean"]) == pytest.approx(100 * np.mean(corr), abs=1e-4)
    expected = np.mean([metrics[("A6", s)]["test"]["acc2_haszero"] for s in SEEDS])
    assert float(a6["acc2_haszero_mean"]) == pytest.approx(expected, abs=1e-4)
    md = (out / "table2.md").read_text()
    assert md.index("| A0 |") < md.index("| A6 |")
    assert "non-zero convention" in md and "not directly comparable" in md and "Paired comparison" in md
    t1 = (out / "table1.md").read_text()
    assert "NOT comparable" in t1 and "ITHP" in t1 and "Ours (this reproduction, 3 seeds)" in t1


def test_figures_are_valid_pngs(grid):
    import matplotlib.image as mpimg

    _root, out, summary, _m = grid
    for name in ("figure2_losses.png", "figure3_modulation.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert summary["figures"] == {"ablation": "A6", "seeds": [0, 2, 10]}
    with open(out / "history_mean.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3"]
    # mean over seeds 0, 2, 10 of 1/(ep+1) + 0.01*seed (+0 for train/total, the first value column)
    assert float(rows[1]["train/total"]) == pytest.approx(0.5 + 0.01 * np.mean(SEEDS))
    assert not list(out.glob(".*tmp"))  # atomic writes left no temporaries


def test_single_ablation_single_seed(tmp_path, base_params):
    rng = np.random.default_rng(1)
    labels = {"valid": _labels(rng, 10), "test": _labels(rng, 12)}
    make_run(tmp_path / "res", "B3", 0, 0.5, labels)
    params = copy.deepcopy(base_params)
    params["ablations"], params["train"]["seeds"] = ["B3"], [0, 1]
    summary = run_report(params, results_dir=tmp_path / "res", out_dir=tmp_path / "rep")
    mae = summary["ablations"]["B3"]["test"]["mae"]
    assert mae["std"] is None and mae["ci95"] is None and "at least 2" in mae["ci_note"]
    assert summary["comparisons"]["vs"] == {} and "no run of the full model" in summary["comparisons"]["note"]
    assert summary["configured"]["missing_runs"] == ["B3-seed1"]
    assert "± n/a" in (tmp_path / "rep" / "table2.md").read_text()
    assert "No run of the full model" in (tmp_path / "rep" / "table1.md").read_text()
    assert (tmp_path / "rep" / "figure3_modulation.png").stat().st_size > 0


def test_undefined_metric_is_null_not_nan(tmp_path, base_params):
    labels = {"valid": np.zeros(4, np.float32), "test": np.zeros(5, np.float32)}  # no non-zero label at all
    make_run(tmp_path / "res", "A6", 0, 0.5, labels)
    run_report(base_params, results_dir=tmp_path / "res", out_dir=tmp_path / "rep")
    text = (tmp_path / "rep" / "summary.json").read_text()
    assert "NaN" not in text
    assert json.loads(text)["ablations"]["A6"]["test"]["acc2_nonzero"]["mean"] is None


def test_errors_name_the_file(tmp_path, base_params):
    rng = np.random.default_rng(2)
    labels = {"test": _labels(rng, 6)}
    folder, m = make_run(tmp_path / "res", "A6", 0, 0.5, labels)
    m["seed"] = 3
    (folder / "metrics.json").write_text(json.dumps(json_safe(m)))
    with pytest.raises(ReportError, match=r"A6-seed0.metrics\.json: says A6-seed3"):
        run_report(base_params, results_dir=tmp_path / "res", out_dir=tmp_path / "rep")
    with pytest.raises(ReportError, match="results folder not found"):
        run_report(base_params, results_dir=tmp_path / "nowhere", out_dir=tmp_path / "rep")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no run folder holds metrics.json"):
        run_report(base_params, results_dir=tmp_path / "empty", out_dir=tmp_path / "rep")


def test_t0_duplicate_rows_and_reliance_columns(tmp_path, base_params):
    """T0 (ours) is a row without paper values; B1 is reported from A1's runs; the reliance deltas of
    cpsl evaluate become Table 2 columns (mean +/- std over seeds)."""
    rng = np.random.default_rng(3)
    labels = {"valid": _labels(rng, 10), "test": _labels(rng, 20)}
    deltas = {("A1", 0): 0.30, ("A1", 1): 0.50, ("T0", 0): 0.0, ("T0", 1): 0.0}
    for (ablation, seed), visual in deltas.items():
        folder, metrics = make_run(tmp_path / "res", ablation, seed, 0.5, labels)
        metrics["reliance"] = {"acoustic": {"mae": 0.0}, "visual": {"mae": visual}, "permutations": 5}
        (folder / "metrics.json").write_text(json.dumps(json_safe(metrics)))
    params = copy.deepcopy(base_params)
    params["ablations"], params["train"]["seeds"] = ["A1", "T0"], [0, 1]
    summary = run_report(params, results_dir=tmp_path / "res", out_dir=tmp_path / "rep")
    rows = summary["ablations"]
    assert list(rows) == ["A1", "B1", "T0"]  # paper order, T0 last
    assert rows["B1"]["trained_as"] == "A1" and rows["B1"]["label"] == "AME Only"
    assert rows["B1"]["test"] == rows["A1"]["test"]
    assert rows["A1"]["reliance"]["visual"]["mae"]["mean"] == pytest.approx(0.4)
    assert rows["T0"]["reliance"]["visual"]["mae"]["mean"] == 0.0
    assert summary["configured"]["missing_runs"] == []
    table = (tmp_path / "rep" / "table2.md").read_text()
    assert "dMAE perm-A" in table and "dMAE perm-V" in table
    assert "AME Only (same runs as A1)" in table
    t0_line = next(line for line in table.splitlines() if line.startswith("| T0 |"))
    assert "0.0000 ± 0.0000" in t0_line and " - |" in t0_line  # no paper value for our own row
    a1_line = next(line for line in table.splitlines() if line.startswith("| A1 |"))
    assert "0.4000 ± 0.1414" in a1_line
    csv_rows = list(csv.DictReader((tmp_path / "rep" / "table2.csv").read_text().splitlines()))
    assert [r["id"] for r in csv_rows] == ["A1", "B1", "T0"]
    assert float(csv_rows[0]["reliance_visual_mae_mean"]) == pytest.approx(0.4)


def _write_history(folder, columns: dict):
    names = ["epoch"] + list(columns)
    n = len(next(iter(columns.values())))
    with open(folder / "history.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        for ep in range(n):
            w.writerow([ep] + [columns[c][ep] for c in columns])


def test_av_not_learnt_mark_and_telemetry_against_the_paper(tmp_path, base_params, capsys):
    """Issue 18: the a/v-not-learnt verdicts evaluate wrote are counted per row (summary.json), shown in Tables
    1-2 with a footnote and named on stderr with the setting to change; the modulation telemetry is held
    against the paper's Section 3.5 ranges over the row's own modulation window."""
    rng = np.random.default_rng(5)
    labels = {"valid": _labels(rng, 10), "test": _labels(rng, 20)}
    verdicts = {("A6", 0): "not_learnt", ("A6", 1): "learnt", ("A0", 0): "learnt", ("A0", 1): "learnt",
                ("T0", 0): "not_applicable", ("T0", 1): "not_applicable"}
    telemetry = {"gm/c_a": [0.75, 0.9, 0.72, 0.5], "gm/c_v": [0.5, 0.5, 0.5, 0.5],
                 "gm/imbalance": [0.2, 0.3, 0.1, 0.2]}
    for (ablation, seed), status in verdicts.items():
        folder, metrics = make_run(tmp_path / "res", ablation, seed, 0.5, labels)
        metrics["learnt"] = {"status": status, "av_not_learnt": status == "not_learnt"}
        (folder / "metrics.json").write_text(json.dumps(json_safe(metrics)))
        if ablation == "A6":
            _write_history(folder, telemetry)
            # the window the row was trained with: epochs 0-2 (epoch 3 is outside it)
            (folder / "train_summary.json").write_text(json.dumps({"params": {"gm": {"start_epoch": 0,
                                                                                     "end_epoch": 2}}}))
    params = copy.deepcopy(base_params)
    params["ablations"], params["train"]["seeds"] = ["A6", "A0", "T0"], [0, 1]
    summary = run_report(params, results_dir=tmp_path / "res", out_dir=tmp_path / "rep")
    rows = summary["ablations"]
    assert rows["A6"]["av_learnt"]["marked_seeds"] == [0] and rows["A6"]["av_learnt"]["n_seeds"] == 2
    assert rows["A0"]["av_learnt"]["n_marked"] == 0 and rows["T0"]["av_learnt"]["not_applicable"]
    table2 = (tmp_path / "rep" / "table2.md").read_text()
    line = {aid: next(ln for ln in table2.splitlines() if ln.startswith(f"| {aid} |")) for aid in ("A0", "A6", "T0")}
    assert line["A6"].endswith("| 1/2 † |") and line["A0"].endswith("| 0/2 |") and line["T0"].endswith("| n/a |")
    assert "† a/v not learnt" in table2 and "train.lr_new_modules" in table2
    table1 = (tmp_path / "rep" / "table1.md").read_text()
    assert "seeds)** †" in table1 and "train.lr_new_modules" in table1
    csv_rows = {r["id"]: r for r in csv.DictReader((tmp_path / "rep" / "table2.csv").read_text().splitlines())}
    assert csv_rows["A6"]["av_not_learnt"] == "1/2" and csv_rows["T0"]["av_not_learnt"] == "n/a"
    err = [ln for ln in capsys.readouterr().err.splitlines() if "did not learn" in ln]
    assert len(err) == 1 and "A6 (1/2 seeds)" in err[0] and "train.lr_new_modules" in err[0]

    mod = rows["A6"]["modulation_vs_paper"]
    assert mod["window"] == [0, 2] and mod["epochs"] == [0, 1, 2, 3]
    assert mod["gm/c_a"]["paper_range"] == [0.7, 0.8] and mod["gm/c_a"]["in_range"] == [True, False, True, False]
    assert mod["gm/c_a"]["fraction_in_range_in_window"] == pytest.approx(2 / 3)  # epoch 3 is outside the window
    assert mod["gm/c_v"]["fraction_in_range_in_window"] == 1.0
    assert mod["gm/imbalance"]["fraction_in_range_in_window"] == pytest.approx(1 / 3)  # 0.3 and 0.1 are out
    assert mod["gm/c_a"]["per_seed_fraction_in_range_in_window"] == {"0": pytest.approx(2 / 3),
                                                                     "1": pytest.approx(2 / 3)}


def test_no_mark_no_footnote(grid):
    """Runs without a verdict (evaluated before the rule existed) show '?', and no footnote is printed."""
    _root, out, summary, _metrics = grid
    assert summary["ablations"]["A6"]["av_learnt"]["unknown_seeds"] == [0, 2, 10]
    table2 = (out / "table2.md").read_text()
    assert "| ? |" in table2 and "†" not in table2 and "†" not in (out / "table1.md").read_text()


def test_results_json_holds_each_trained_row_s_means_for_dvc_metrics(tmp_path, base_params):
    """reports/<dataset>/results.json (DVC's metrics of the report stage): per trained row the test means of MAE,
    Corr and Acc-2 (non-zero), the a/v mark and the seed count; a duplicate paper row (B1 = A1) once."""
    rng = np.random.default_rng(5)
    labels = {"valid": _labels(rng, 10), "test": _labels(rng, 20)}
    runs = {}
    for ablation in ("A1", "T0"):
        for seed in (0, 1):
            folder, metrics = make_run(tmp_path / "res", ablation, seed, 0.4, labels)
            metrics["learnt"] = ({"status": "not_applicable"} if ablation == "T0"
                                 else {"status": "not_learnt" if seed == 1 else "learnt"})
            (folder / "metrics.json").write_text(json.dumps(json_safe(metrics)))
            runs[(ablation, seed)] = metrics
    params = copy.deepcopy(base_params)
    params["ablations"], params["train"]["seeds"] = ["A1", "T0"], [0, 1]
    run_report(params, results_dir=tmp_path / "res", out_dir=tmp_path / "rep")
    results = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert set(results) == {"A1", "T0"}  # B1 is A1's runs: once
    for aid in ("A1", "T0"):
        for name, key in (("mae", "mae"), ("corr", "corr"), ("acc2", "acc2_nonzero")):
            mean = np.mean([runs[(aid, s)]["test"][key] for s in (0, 1)])
            assert results[aid][name] == pytest.approx(mean, abs=1e-6), (aid, name)
        assert results[aid]["seeds"] == 2
    assert results["A1"]["av_not_learnt"] == 1  # seed 1 marked
    assert "av_not_learnt" not in results["T0"]  # no a/v path
    assert all(isinstance(v, (int, float)) for row in results.values() for v in row.values())  # flat numbers
