"""A rerun of a finished train stage always ends with every declared output, produced by the current code.

Workflow engines delete a stage's outputs before rerunning it (DVC on `repro --force`, a params or code change,
`exp run`; Snakemake on `--forcerun`); state/last.pt is not an output and survives. The finished state must
then never turn the rerun into a no-op that writes nothing (issue 8), and a state saved by other code must
never be resumed.
"""
from __future__ import annotations

import shutil

import pytest
from train_helpers import assert_same_tensors, load_model_states, make_cache, small_params, tiny_text_model

from cpsl.formats import run_folder
from cpsl.runtime import deps
from cpsl.stages.train import run_train

SETTINGS = {"train.epochs": 2, "train.batch_size": 8, "ablations": ["A6"]}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run and a copy of it (the reference outputs)."""
    root = tmp_path_factory.mktemp("rerun")
    text = tiny_text_model(root / "text")
    cache = make_cache(root / "cache.h5", n_train=16, n_valid=8)
    params = small_params(text, **SETTINGS)
    run = root / "run"
    assert run_train(params, seed=0, data_path=cache, out_dir=run) == 0
    shutil.copytree(run, root / "reference")
    return params, cache, run, root / "reference"


def _delete(run, names):
    for name in names:
        path = run / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _assert_complete_and_equal(run, reference):
    for name in run_folder.TRAIN_OUTPUTS:
        assert (run / name).exists(), f"{name} missing after the rerun"
    assert_same_tensors(load_model_states(run / run_folder.BEST_FILE),
                        load_model_states(reference / run_folder.BEST_FILE))
    assert run_folder.read_history(run / run_folder.HISTORY_FILE) == \
        run_folder.read_history(reference / run_folder.HISTORY_FILE)


@pytest.mark.parametrize("deleted", [run_folder.TRAIN_OUTPUTS, (run_folder.BEST_FILE,),
                                     (run_folder.HISTORY_FILE, run_folder.SUMMARY_FILE)],
                         ids=["all-outputs", "best-only", "history-and-summary"])
def test_rerun_after_an_engine_deleted_outputs_writes_them_all(finished, deleted, capfd):
    params, cache, run, reference = finished
    _delete(run, deleted)
    assert (run / run_folder.STATE_FILE).is_file()  # the finished state survives, as under DVC
    assert run_train(params, seed=0, data_path=cache, out_dir=run) == 0
    _assert_complete_and_equal(run, reference)
    err = capfd.readouterr().err
    if run_folder.BEST_FILE in deleted:  # the state vouches for a best.pt that is gone: trained again
        assert "starting this run from scratch" in err
    else:  # best.pt intact: the finished state is resumed and the missing files are written from it
        assert "resuming" in err


def test_complete_run_is_not_retrained(finished, capfd):
    params, cache, run, reference = finished
    stamp = (run / run_folder.BEST_FILE).stat().st_mtime_ns
    assert run_train(params, seed=0, data_path=cache, out_dir=run) == 0
    assert "already trained" in capfd.readouterr().err
    assert (run / run_folder.BEST_FILE).stat().st_mtime_ns == stamp


def test_state_saved_by_other_code_is_not_resumed(finished, monkeypatch, capfd):
    params, cache, run, reference = finished
    _delete(run, (run_folder.SUMMARY_FILE,))  # so the run is not "already trained"
    monkeypatch.setattr(deps, "code_hash", lambda stage, row_id=None: "edited code")
    assert run_train(params, seed=0, data_path=cache, out_dir=run) == 0
    assert "belongs to a run with other params, data or code" in capfd.readouterr().err
    _assert_complete_and_equal(run, reference)  # the edit changed no behaviour: same weights


def test_code_hash_covers_exactly_the_files_train_runs(tmp_path):
    files = deps.row_files("train", "A6")  # the train kit + the CP+SL rows' own code (issue 23: per row)
    assert "src/cpsl/model/heads.py" in files and "src/cpsl/train/loop.py" in files
    assert "src/cpsl/stages/report.py" not in files and "src/cpsl/stages/align.py" not in files
    assert not any(f.startswith("src/cpsl/baselines/mmim/") for f in files)  # no other row's code
