"""The report never averages runs trained with different params into one row (issue 10, case 6)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import yaml
from test_report_stage import _labels, make_run

from cpsl.config import validate_params
from cpsl.report.stage import run_report
from cpsl.run_identity import MixedParamsError


@pytest.fixture()
def base_params():
    with open("params.yaml") as fh:
        return validate_params(yaml.safe_load(fh))


def _results(tmp_path, base_params, params_of_seed: dict):
    root = tmp_path / "results"
    rng = np.random.default_rng(0)
    labels = {"valid": _labels(rng, 12), "test": _labels(rng, 18)}
    for seed, params in params_of_seed.items():
        folder, _ = make_run(root, "A6", seed, 0.3, labels)
        (folder / "train_summary.json").write_text(json.dumps({"fingerprint": f"f{seed}", "params": params}))
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
