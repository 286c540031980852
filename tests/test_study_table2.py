"""benchmarks/study_table2.py (issue 25): the Table 2 claims study runs through the product's own stages and report,
and its JSON / markdown say what the run folders and the report hold: per row mean ± std, the paired test vs A6,
the modulation telemetry, loss spikes and collapse-guard stops."""
from __future__ import annotations

import csv
import json
import math

import pytest
from project_copy import load_benchmark

from cpsl.formats.run_folder import HISTORY_COLUMNS


def _study():
    return load_benchmark("study_table2")


def test_a_loss_spike_is_an_epoch_above_twice_the_previous_one():
    study = _study()
    hist = [{"epoch": e, "train/total": v} for e, v in enumerate([1.0, 0.9, 1.8, 3.7, 1.0, float("inf"), 0.5])]
    # 1.8 is exactly 2 x 0.9 (not above); 3.7 > 3.6; inf is a spike; 0.5 after inf is not
    assert study.loss_spikes(hist) == [3, 5]
    assert study.loss_spikes(hist[:1]) == [] and study.loss_spikes([]) == []


def _write_history(folder, rows):
    folder.mkdir(parents=True)
    with (folder / "history.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, 0.5) for k in HISTORY_COLUMNS})


def test_a_run_record_counts_guard_stops_and_averages_telemetry_inside_the_window(tmp_path):
    study = _study()
    rows = [{"epoch": e, "train/total": t, "gm/c_a": ca, "gm/c_v": 0.2, "gm/conflicts": k}
            for e, (t, ca, k) in enumerate([(1.0, 0.4, 3), (0.8, 0.6, 5), (2.0, 1.0, 0)])]
    _write_history(tmp_path / "A5-seed0", rows)
    (tmp_path / "A5-seed0" / "collapse.json").write_text(json.dumps({"epoch": 2, "what": "loss 'stat' is nan"}))
    rec = study.run_record(tmp_path / "A5-seed0", window=(0, 1))  # epoch 2 outside the modulation window
    assert rec["collapse_guard_stop"] and rec["collapse"]["epoch"] == 2
    assert rec["loss_spikes"] == [2] and rec["epochs_run"] == 3
    assert rec["c_a"] == pytest.approx(0.5) and rec["c_v"] == pytest.approx(0.2)
    assert rec["conflicts_per_epoch"] == pytest.approx(4.0)
    _write_history(tmp_path / "A6-seed0", rows)
    assert not study.run_record(tmp_path / "A6-seed0", window=(0, 2))["collapse_guard_stop"]


@pytest.mark.slow
def test_the_study_on_a_tiny_demo_matches_its_run_folders_and_report(tmp_path):
    study = _study()
    out = tmp_path / "out"
    assert study.main(["--datasets", "demo", "--seeds", "0", "--epochs", "1", "--rows", "A0", "--demo-videos", "10",
                       "--cores", "1", "--work", str(tmp_path / "work"), "--out", str(out), "--tag", "t"]) == 0
    result = json.loads((out / "t.json").read_text())
    markdown = (out / "t.md").read_text()
    (ds,) = result["datasets"]
    assert ds["dataset"] == "demo" and ds["seeds"] == [0] and ds["epochs"] == 1
    assert set(ds["rows"]) == {"A6", "A0"}
    project = tmp_path / "work" / "demo"
    summary = json.loads((project / "reports/demo/summary.json").read_text())
    for row_id, row in ds["rows"].items():
        folder = project / "results/demo" / f"{row_id}-seed0"
        metrics = json.loads((folder / "metrics.json").read_text())
        for key in study.METRICS:
            assert row[key]["mean"] == pytest.approx(metrics["test"][key]) and row[key]["std"] is None
        assert row["av_learnt"] == summary["ablations"][row_id]["av_learnt"]
        with (folder / "history.csv").open() as f:
            hist = list(csv.DictReader(f))
        assert len(hist) == 1 and row["loss_spikes"] == 0 and row["collapse_guard_stops"] == 0
        assert row["c_v"] == pytest.approx(float(hist[0]["gm/c_v"]))
        assert row["conflicts_per_epoch"] == pytest.approx(float(hist[0]["gm/conflicts"]))
        line = next(line for line in markdown.splitlines() if line.startswith(f"| {row_id} |"))
        assert f"{row['mae']['mean']:.3f}" in line and f"{row['corr']['mean']:.3f}" in line
        assert "| learnt |" in line or "**not learnt** (1/1)" in line  # the report's verdict, one seed
    assert ds["rows"]["A0"]["c_a"] == 1.0 and ds["rows"]["A0"]["conflicts_per_epoch"] == 0  # no modulation
    assert ds["rows"]["A6"]["c_v"] < 1.0 or ds["rows"]["A6"]["c_a"] < 1.0  # modulated
    # the paired test vs A6 is the report's (one seed: the t-test is undefined, the bootstrap is not)
    boot = summary["comparisons"]["vs"]["A0"]["paired_bootstrap_over_test_segments"]["metrics"]["mae"]
    assert ds["rows"]["A0"]["vs_A6"]["mae"]["bootstrap"] == boot and "vs_A6" not in ds["rows"]["A6"]
    assert math.isfinite(boot["p"]) and ds["rows"]["A0"]["vs_A6"]["mae"]["t_test_p"] is None


@pytest.mark.parametrize("dataset", ["demo", "mosi_mirror", "real_features"])
def test_each_datasets_project_params_validate(tmp_path, dataset):
    """A renamed param fails here, not an hour into the study."""
    from cpsl.config.schema import validate_params

    study = _study()
    params = validate_params(study.project_params(dataset, tmp_path, [0, 1, 2], 3, None), "study params")
    assert params["train"]["seeds"] == [0, 1, 2] and params["train"]["epochs"] == 3
    assert params["execution"]["device"] == "cpu" and params["ablations"] == ["A6", "T0"]
    if dataset != "demo":
        assert params["dataset"] == "mosi" and params["data"]["mirror"] == str(tmp_path / "mirrors" / dataset)
        assert params["text"]["model"] == study.TEXT_MODEL


def test_set_overrides_every_runs_params_and_a_typo_fails_naming_the_key(tmp_path):
    from cpsl.errors import ParamsError

    study = _study()
    params = study.project_params("mosi_mirror", tmp_path, [0], 2, ["A2"], overrides=["gm.coefficient=shifted",
                                                                                      "cp.eta=0.3"])
    assert params["gm"]["coefficient"] == "shifted" and params["cp"]["eta"] == 0.3
    with pytest.raises(ParamsError, match="gm.coeficient"):
        study.project_params("mosi_mirror", tmp_path, [0], 2, ["A2"], overrides=["gm.coeficient=shifted"])
    with pytest.raises(ParamsError, match="gm.coefficient"):
        study.project_params("mosi_mirror", tmp_path, [0], 2, ["A2"], overrides=["gm.coefficient=sideways"])


def test_claims_pair_rows_over_their_shared_seeds():
    study = _study()

    def row(maes, corr=0.8):
        per = {str(s): v for s, v in enumerate(maes)}
        return {"mae": {"mean": sum(maes) / len(maes), "std": 0.1, "per_seed": per},
                "corr": {"mean": corr, "std": 0.0, "per_seed": {s: corr for s in per}},
                "acc2_nonzero": {"mean": 80.0, "std": 0.0, "per_seed": {s: 80.0 for s in per}},
                "loss_spikes": 0, "collapse_guard_stops": 0}

    rows = {"A4": row([0.6, 0.7, 0.8]), "A5": row([1.0, 1.2, 1.3], 0.7), "A6": row([0.5, 0.6])}
    c1 = study.claims(rows)["1_A5_collapses"][0]
    assert c1["rows"] == "A5 - A4" and c1["per_seed"] == pytest.approx({"0": 0.4, "1": 0.5, "2": 0.5})
    assert c1["mean_diff"] == pytest.approx(1.4 / 3) and 0 < c1["t_test_p"] < 0.01
    assert c1["paper_diff"] == pytest.approx(1.1268 - 0.6560)
    c2 = study.claims(rows)["2_CP_rescues"]
    assert c2[0]["per_seed"] == pytest.approx({"0": -0.5, "1": -0.6})  # seed 2 has no A6 run
    assert c2[2]["best_row_per_metric"]["mae"] == "A6" and c2[2]["best_row_per_metric"]["corr"] == "A4"
    assert study.claims(rows)["3_GE_without_AME"] == [None, None]  # C1, B5 not run: said, not guessed
    # each group-A step paired on its own seeds and named by the component it adds (A4 -> A6: SL)
    steps = study.claims(rows)["5b_component_costs"]
    assert steps[:3] == [None, None, None]  # A0..A3 not run
    assert steps[3] is None  # A3 -> A4: A3 not run
    assert steps[4]["rows"] == "A6 - A4" and steps[4]["adds"] == "SL"
    assert steps[4]["per_seed"] == pytest.approx({"0": -0.1, "1": -0.1})
    assert "A6 - A4 (SL) mae -0.100" in study.markdown(
        {"datasets": [{"dataset": "d", "epochs": 1, "seeds": [0, 1], "text_model": "m", "rows": {},
                       "claims": study.claims(rows)}]})
