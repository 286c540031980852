"""The report never averages runs trained with different params into one row (issue 10, case 6), and reads
exactly the configured runs, naming the others and the missing ones (issue 16, item 4)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import yaml
from test_report_stage import _labels, make_run, run_record

from cpsl.config.schema import validate_params
from cpsl.formats.run_identity import MixedParamsError
from cpsl.metrics.scores import json_safe
from cpsl.stages.report import run_report


@pytest.fixture()
def base_params():
    with open("params.yaml") as fh:
        return validate_params(yaml.safe_load(fh))


def _results(tmp_path, base_params, params_of_seed: dict):
    root = tmp_path / "results"
    rng = np.random.default_rng(0)
    labels = {"valid": _labels(rng, 12), "test": _labels(rng, 18)}
    for seed, params in params_of_seed.items():
        folder, metrics = make_run(root, "A6", seed, 0.3, labels)
        # as train and evaluate leave it: the run's params in train_summary.json and in metrics.json's "run"
        metrics["run"] = run_record("A6", seed, params)
        (folder / "metrics.json").write_text(json.dumps(json_safe(metrics)))
        (folder / "train_summary.json").write_text(json.dumps({"fingerprint": metrics["run"]["fingerprint"],
                                                               "params": params}))
    return root


def test_seeds_trained_with_different_params_are_refused_naming_the_folders(tmp_path, base_params):
    eta_03 = copy.deepcopy(base_params)
    eta_03["cp"]["eta"], eta_03["train"]["seeds"] = 0.3, [0]
    root = _results(tmp_path, base_params, {0: eta_03, 1: base_params})
    with pytest.raises(MixedParamsError) as err:
        run_report(base_params, results_dir=root, out_dir=tmp_path / "reports")
    msg = str(err.value)
    assert str(root / "A6-seed0") in msg and str(root / "A6-seed1") in msg and "cp.eta=0.3 vs 0.5" in msg
    assert "train.seeds" not in msg and "\n" not in msg
    assert not (tmp_path / "reports" / "summary.json").exists()


def test_per_run_keys_may_differ_within_a_row(tmp_path, base_params):
    one_at_a_time = copy.deepcopy(base_params)
    one_at_a_time["train"]["seeds"], one_at_a_time["ablations"] = [1], ["A6"]
    # how a run was executed (issue 17: processes, device, step mode, eval chunk) never splits a row
    one_at_a_time["execution"].update(nproc=2, device="cpu", step="eager", eval_batch_size=7)
    root = _results(tmp_path, base_params, {0: base_params, 1: one_at_a_time})
    summary = run_report(base_params, results_dir=root, out_dir=tmp_path / "reports")
    assert summary["ablations"]["A6"]["seeds"] == [0, 1]


# ---------------------------------------------------------------- issue 16, item 4: the configured runs, exactly
def test_a_leftover_run_trained_with_other_params_is_not_read_and_is_named_once(tmp_path, base_params, capsys):
    """A6-seed1 from an earlier experiment (train.nproc 1) beside this one's A6-seed2 (train.nproc 2), with
    train.seeds [2]: the report reads A6-seed2 only (was: refused to run, or averaged A6-seed1 in)."""
    earlier, now = copy.deepcopy(base_params), copy.deepcopy(base_params)
    earlier["train"]["nproc"], now["train"]["nproc"] = 1, 2
    now["train"]["seeds"], now["ablations"] = [2], ["A6"]
    root = _results(tmp_path, base_params, {1: earlier, 2: now})
    (root / "T0-seed0").mkdir()  # a training of another experiment, in progress
    summary = run_report(now, results_dir=root, out_dir=tmp_path / "reports")
    assert summary["ablations"]["A6"]["seeds"] == [2] and summary["ablations"]["A6"]["runs"] == ["A6-seed2"]
    assert summary["other_folders_not_read"] == ["A6-seed1", "T0-seed0"]
    assert summary["configured"]["missing_runs"] == []
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cpsl report: warning: {root}: 2 folder(s) not among the configured runs, not read: A6-seed1, "
                   f"T0-seed0"]


def test_missing_configured_runs_are_named_and_strict_makes_them_an_error(tmp_path, base_params, capsys):
    from cpsl.cli import main

    one_seed = copy.deepcopy(base_params)
    one_seed["ablations"], one_seed["train"]["seeds"] = ["A6"], [0]
    root = _results(tmp_path, base_params, {0: one_seed})
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(one_seed, sort_keys=False))
    argv = ["report", "--params", str(params_file), "--results", str(root), "--out", str(tmp_path / "reports"),
            "--set", "train.seeds=[0,1]"]
    assert main(argv) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cpsl report: warning: {root}: configured run(s) without metrics.json, left out of the report: "
                   f"A6-seed1 (--strict makes this an error)"]
    summary = json.loads((tmp_path / "reports" / "summary.json").read_text())
    assert summary["configured"]["missing_runs"] == ["A6-seed1"] and summary["ablations"]["A6"]["seeds"] == [0]

    (tmp_path / "reports" / "summary.json").unlink()
    assert main([*argv, "--strict"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"cpsl report: error: {root}: configured run(s) without metrics.json: A6-seed1; train and "
                   f"evaluate them, or leave them out of ablations / train.seeds")
    assert not (tmp_path / "reports" / "summary.json").exists()


def test_grid_reports_the_whole_grid_and_otherwise_only_the_configured_rows(tmp_path, base_params, capsys):
    from test_report_stage import _labels, make_run

    rng = np.random.default_rng(4)
    labels = {"valid": _labels(rng, 8), "test": _labels(rng, 9)}
    for row in ("A6", "A0", "A1"):
        make_run(tmp_path / "res", row, 0, 0.4, labels)
    params = copy.deepcopy(base_params)
    params["ablations"], params["train"]["seeds"] = ["A6"], [0]
    assert list(run_report(params, results_dir=tmp_path / "res", out_dir=tmp_path / "r1")["ablations"]) == ["A6"]
    grid = run_report(params, results_dir=tmp_path / "res", out_dir=tmp_path / "r2", grid=True)
    assert list(grid["ablations"]) == ["A0", "A1", "A6", "B1"]  # paper order; B1 from A1's runs
    assert "A2-seed0" in grid["configured"]["missing_runs"] and grid["other_folders_not_read"] == []


# ---------------------------------------------------------------- issue 21, item 5: metrics.json against a schema
def _edit_metrics(folder, edit):
    """Apply ``edit(metrics)`` to the run's metrics.json; a str result is written as the raw file text."""
    path = folder / "metrics.json"
    m = json.loads(path.read_text())
    out = edit(m)
    path.write_text(out if isinstance(out, str) else json.dumps(m))


def _set(dotted, value):
    def edit(m):
        *parents, leaf = dotted.split(".")
        node = m
        for key in parents:
            node = node[key]
        node[leaf] = value
    return edit


def _drop(dotted):
    def edit(m):
        *parents, leaf = dotted.split(".")
        node = m
        for key in parents:
            node = node[key]
        del node[leaf]
    return edit


def _raw(dotted, literal):
    """metrics.json text with ``dotted`` holding a JSON literal json.dumps would not write (NaN, Infinity)."""
    def edit(m):
        _set(dotted, "__RAW__")(m)
        return json.dumps(m).replace('"__RAW__"', literal)
    return edit


@pytest.mark.parametrize(("edit", "message"), [
    (_set("test.mae", "abc"), "'test.mae' must be a finite number in [0, inf], got \"abc\""),
    (_set("test.acc2_nonzero", "85.0"),
     "'test.acc2_nonzero' must be a finite number in [0, 100] or null, got \"85.0\""),
    (_set("valid.corr", 3.5), "'valid.corr' must be a finite number in [-1, 1] or null, got 3.5"),
    (_raw("test.mae", "NaN"), "'test.mae' must be a finite number in [0, inf], got nan"),
    (_raw("test.corr", "Infinity"), "'test.corr' must be a finite number in [-1, 1] or null, got inf"),
    (_drop("test.mae"), "missing key 'test.mae'"),
    (_set("test", [1, 2]), "'test' must be a mapping, got [1, 2]"),
    (_set("reliance", {"acoustic": {"mae": "big"}}), "'reliance.acoustic.mae' must be a finite number or null, "
                                                     "got \"big\""),
    (_set("reliance", {"visual": "none"}), "'reliance.visual' must be a mapping, got \"none\""),
    (_set("learnt", "yes"), "'learnt' must be a mapping or null, got \"yes\""),
    (_set("learnt", {"status": "maybe"}), "'learnt.status' must be one of learnt, not_learnt, not_applicable, "
                                          "unknown, got \"maybe\""),
    (_set("selected_epoch", 2.5), "'selected_epoch' must be a non-negative integer, got 2.5"),
    (_set("selected_epoch", "2"), "'selected_epoch' must be a non-negative integer, got \"2\""),
    (_set("seed", True), "'seed' must be a non-negative integer, got true"),
], ids=["string mae", "string acc", "corr out of range", "NaN mae", "inf corr", "missing mae", "test not a mapping",
        "string reliance", "reliance stream not a mapping", "learnt yes", "unknown learnt status",
        "fractional epoch", "string epoch", "bool seed"])
def test_a_malformed_metrics_file_is_one_line_naming_file_and_key(tmp_path, base_params, capsys, edit, message):
    """Was: a traceback (a string where a number belongs, in reliance, `"learnt": "yes"`), an "n/a" cell
    (NaN, inf, a missing mae) or a non-integer selected_epoch copied into summary.json."""
    from cpsl.cli import main

    params = copy.deepcopy(base_params)
    params["ablations"], params["train"]["seeds"] = ["A6"], [0]
    root = _results(tmp_path, base_params, {0: params})
    _edit_metrics(root / "A6-seed0", edit)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    reports = tmp_path / "reports"
    assert main(["report", "--params", str(params_file), "--results", str(root), "--out", str(reports)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"cpsl report: error: {root / 'A6-seed0' / 'metrics.json'}: {message}")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not reports.exists() or not any(reports.iterdir())  # nothing written


def test_null_metrics_other_than_mae_stay_undefined(tmp_path, base_params):
    """null is how evaluate writes an undefined metric (the correlation of constant predictions): accepted."""
    params = copy.deepcopy(base_params)
    params["ablations"], params["train"]["seeds"] = ["A6"], [0]
    root = _results(tmp_path, base_params, {0: params})
    _edit_metrics(root / "A6-seed0", _set("test.corr", None))
    summary = run_report(params, results_dir=root, out_dir=tmp_path / "reports")
    assert summary["ablations"]["A6"]["test"]["corr"]["mean"] is None


# ---------------------------------------------------------------- issue 21, item 5: the outputs as one set
_KILLED_REPORT = """
import os, signal, sys
import yaml
from cpsl.config.schema import validate_params
from cpsl.report import figures, output_set
from cpsl.stages.report import run_report

params_file, results, out, point = sys.argv[1:]
die = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
if point == "figures":          # the tables of the new set are written, the figures not yet
    figures.write_figures = die
else:                           # the new set is in place, the old one not yet deleted
    output_set.discard_old = die
run_report(validate_params(yaml.safe_load(open(params_file))), results_dir=results, out_dir=out)
"""


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _two_reports(tmp_path, base_params):
    """reports/ holding the report of seed 0, results holding seeds 0 and 1, the params of both seeds."""
    one = copy.deepcopy(base_params)
    one["ablations"], one["train"]["seeds"] = ["A6"], [0]
    two = copy.deepcopy(one)
    two["train"]["seeds"] = [0, 1]
    root = _results(tmp_path, base_params, {0: one, 1: two})
    out = tmp_path / "reports" / "demo"
    run_report(one, results_dir=root, out_dir=out)
    (out / ".gitignore").write_text("/summary.json\n")  # a file the report does not write: kept
    params_file = tmp_path / "two.yaml"
    params_file.write_text(yaml.safe_dump(two, sort_keys=False))
    return root, out, params_file, two


@pytest.mark.parametrize("point", ["figures", "after swap"])
def test_a_report_killed_midway_leaves_the_old_set_or_the_new_one(tmp_path, base_params, point):
    """SIGKILL while the figures are written: the old report, byte for byte (was: new tables beside old figures).
    SIGKILL after the swap: the whole new report. The next report removes what the killed one left."""
    import signal
    import subprocess
    import sys

    root, out, params_file, two = _two_reports(tmp_path, base_params)
    before = _snapshot(out)
    proc = subprocess.run([sys.executable, "-c", _KILLED_REPORT, str(params_file), str(root), str(out), point],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    after = _snapshot(out)
    if point == "figures":
        assert after == before
    else:
        reference = tmp_path / "reference"
        run_report(two, results_dir=root, out_dir=reference)
        assert sorted(after) == sorted([*_snapshot(reference), ".gitignore"])
        assert json.loads(after["summary.json"])["ablations"]["A6"]["seeds"] == [0, 1]
        assert after["table2.md"] == (reference / "table2.md").read_bytes()
    assert [p.name for p in out.parent.iterdir() if p.name != "demo"]  # the killed run's staging folder
    run_report(two, results_dir=root, out_dir=out)
    assert [p.name for p in out.parent.iterdir()] == ["demo"] and (out / ".gitignore").is_file()
    assert json.loads((out / "summary.json").read_text())["ablations"]["A6"]["seeds"] == [0, 1]


def test_the_fallback_swap_killed_between_its_renames_is_recovered(tmp_path):
    """Where the file system cannot exchange two folders, a kill between moving the old set aside and moving
    the new one in leaves no reports folder: the next report puts the old set back before it starts."""
    from cpsl.report import output_set

    out = tmp_path / "reports" / "demo"
    (tmp_path / "reports" / ".demo.report-old.x1.tmp").mkdir(parents=True)
    (tmp_path / "reports" / ".demo.report-old.x1.tmp" / "summary.json").write_text("old")
    (tmp_path / "reports" / ".demo.report-new.x2.tmp").mkdir()
    (tmp_path / "reports" / ".demo.report-new.x2.tmp" / "summary.json").write_text("unfinished new")
    output_set.recover(out)
    assert (out / "summary.json").read_text() == "old" and [p.name for p in out.parent.iterdir()] == ["demo"]


def test_a_foreign_folder_in_the_reports_folder_is_refused_not_moved(tmp_path, base_params, monkeypatch):
    from cpsl.report import output_set

    monkeypatch.setattr(output_set, "_exchange", lambda a, b: False)  # the two-rename fallback, same result
    root, out, _, two = _two_reports(tmp_path, base_params)
    run_report(two, results_dir=root, out_dir=out)
    assert (out / ".gitignore").read_text() == "/summary.json\n" and [p.name for p in out.parent.iterdir()] == ["demo"]
    (out / "notes").mkdir()
    with pytest.raises(output_set.PipelineError, match="holds the folder 'notes', which the report does not write"):
        run_report(two, results_dir=root, out_dir=out)
    assert (out / "notes").is_dir() and [p.name for p in out.parent.iterdir()] == ["demo"]
