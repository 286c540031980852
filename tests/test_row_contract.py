"""The contract every row keeps, one suite parametrised over the rows (issue 23: tests share, not copy).

Rows: every registered Table 1 baseline (cpsl.config.rows.BASELINE_IDS: a new baseline is covered without editing this
file) and three CP+SL rows. The CP+SL rows share one model and one recipe and differ only in their switches
(cpsl.config.ablations), so three cover them: A6 has every switch on (AME sampling, GM, GE, CP, SL: the recipe's whole
state), A0 every switch off but the a/v path, T0 the a/v path off too (text only, no auxiliary heads).

Per row, through the public entry points only (cpsl.config.rows, the `cpsl` CLI, cpsl.stages.train.run_train,
cpsl.stages.evaluate.run_evaluate, the run-folder readers of cpsl.formats.run_folder):

1. Params: an out-of-range value of any bounded key of the row's own section fails `cpsl train` at start-up (exit
   2, one line naming the key, nothing written).
2. Planted signal: trained and evaluated by the real stages on a cache whose label is planted in a stream the
   row's prediction reads (visual for rows with an a/v path; text for rows without one: T0, ITHP), the row beats
   the same run on the same cache with shuffled training labels by MARGIN_CORR in test Pearson r and MARGIN_MAE
   in test MAE.
3. The a/v mark (metrics.json ``learnt``): "learnt", relying on the visual stream, for a row with an a/v path;
   "not_applicable" with zero reliance deltas for a row whose prediction reads no a/v (T0; ITHP, which uses a/v
   only as training targets: its documented exception). The run records only the params the row reads.
4. Resume: a run stopped by SIGTERM mid-epoch and resumed, and a real `cpsl train` SIGKILLed mid-epoch and rerun,
   both end with the weights (best.pt and state/last.pt), the recipe's state and the history of an uninterrupted
   run.
"""
from __future__ import annotations

import contextlib
import io
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch
from train_helpers import (
    REPO,
    assert_same_tensors,
    kill_mid_epoch,
    make_cache,
    planted_caches,
    schedule_settings,
    small_params,
    tiny_text_model,
    write_params,
)

from cpsl.cli import main
from cpsl.config import rows
from cpsl.config.ablations import switches_for
from cpsl.config.param_types import Spec
from cpsl.config.schema import SCHEMA
from cpsl.formats import run_folder
from cpsl.stages.evaluate import run_evaluate
from cpsl.stages.train import run_train

CPSL_ROWS = ("A6", "A0", "T0")
ROW_IDS = (*CPSL_ROWS, *rows.BASELINE_IDS)

SEED = 0
MARGIN_CORR = 0.4  # test Pearson r: planted signal vs the shuffled-label control (both deterministic on CPU)
MARGIN_MAE = 0.25  # test MAE: the shuffled-label control's minus the planted run's
# the planted-signal schedule (24 steps an epoch), from each row's former own planted-signal test: 6 epochs at a
# text-encoder rate of 5e-4 (at 1e-4 the signal at the word positions reaches a baseline's [CLS] too slowly),
# fewer epochs where a row fits the signal sooner (MMIM 2; Self-MM 3: its unimodal losses start in the third)
PLANTED_SCHEDULE = {"epochs": 6, "batch_size": 8, "lr": 5e-4, "lr_new_modules": 5e-3, "warmup_ratio": 0.0}
PLANTED_EPOCHS = {"MMIM": 2, "SELFMM": 3}
# the CP+SL rows as tests/test_planted_signal.py calibrated them: a slower text encoder (at a high rate a random
# one memorises the training segments by their filler words), wider fusion
CPSL_PLANTED = {"train.lr": 1e-4, "model.intermediate_dim": 16, "model.fusion_dim": 16}
# resume: 32 segments in batches of 4 for 3 epochs (8 steps an epoch: the signals land mid-epoch)
RESUME_SCHEDULE = {"epochs": 3, "batch_size": 4, "lr": 1e-3, "lr_new_modules": 1e-2, "warmup_ratio": 0.0}


def reads_av(row_id: str) -> bool:
    """Does the row's prediction read the acoustic/visual inputs (its spec says so for a baseline)?"""
    spec = rows.row(row_id).baseline
    return switches_for(row_id).av if spec is None else spec.reads_av_at_inference


@pytest.fixture(scope="module", params=ROW_IDS)
def row_id(request):
    return request.param


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    return tiny_text_model(tmp_path_factory.mktemp("text") / "text")


# ------------------------------------------------------------------------------------------------------ params
def _bad_value(spec: Spec):
    """A value of the leaf's type its check refuses (None: the leaf has no bound to step over)."""
    if spec.check is None:
        return None
    if spec.types == (str,):
        return "not-an-option" if not spec.check("not-an-option") else None
    if set(spec.types) <= {int, float}:
        return next((v for v in (-1, 10 ** 9) if not spec.check(v)), None)
    return None


def _row_leaves(row_id: str) -> dict[str, Spec]:
    """Every leaf of the row's own params: a baseline's MOSI section (hyper-parameters and schedule), a CP+SL
    row's model/loss/gm/cp sections."""
    spec = rows.row(row_id).baseline
    roots = ({f"{s}": SCHEMA[s] for s in rows.CPSL_SECTIONS} if spec is None else
             {f"{rows.BASELINES_SECTION}.{spec.section}.mosi": SCHEMA[rows.BASELINES_SECTION][spec.section]["mosi"]})
    leaves = {}

    def walk(prefix, node):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(f"{prefix}.{key}", value)
            else:
                leaves[f"{prefix}.{key}"] = value

    for prefix, node in roots.items():
        walk(prefix, node)
    return leaves


def test_an_out_of_range_value_in_the_rows_section_fails_at_start_up_naming_the_key(row_id, tmp_path, capsys):
    bad = [(key, v) for key, spec in _row_leaves(row_id).items() if (v := _bad_value(spec)) is not None]
    assert len(bad) >= 3, bad  # the section has bounded keys to test
    for key, value in bad[::max(1, len(bad) // 4)]:  # 4-5 keys spread over the section (each call ~0.1 s)
        code = main(["train", "--params", str(REPO / "params.yaml"), "--seed", "0", "--ablation", row_id,
                     "--set", f"{key}={value}", "--data", str(tmp_path / "none.h5"), "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, (key, value, err)  # a params error, before the missing cache (exit 1) is even looked at
        assert len(err) == 1 and err[0].startswith("cpsl train: ") and f"'{key}'" in err[0], (key, err)
        assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------- planted signal
@pytest.fixture(scope="module")
def planted(row_id, text_model, tmp_path_factory):
    """metrics.json (with the run's train_summary.json) of the row on its planted cache and on the same cache with
    shuffled training labels."""
    tmp = tmp_path_factory.mktemp(f"planted-{row_id}")
    caches = planted_caches(tmp, signal=("visual",) if reads_av(row_id) else ("text",))
    schedule = {**PLANTED_SCHEDULE, "epochs": PLANTED_EPOCHS.get(row_id, PLANTED_SCHEDULE["epochs"])}
    settings = schedule_settings(row_id, **schedule)
    if not rows.is_baseline(row_id):
        settings.update(CPSL_PLANTED)
    params = small_params(text_model, **settings, **{"eval.reliance_permutations": 3})
    out = {}
    for name in ("planted", "shuffled"):
        run = tmp / f"{name}-{row_id}-seed{SEED}"
        assert run_train(params, seed=SEED, ablation=row_id, data_path=caches[name], out_dir=run) == 0
        with contextlib.redirect_stderr(io.StringIO()):  # the control's "a/v did not learn" hint
            run_evaluate(params, run, data_path=caches[name])
        out[name] = {**run_folder.read_metrics(run), "summary": run_folder.read_summary(run)}
    return out


def test_the_row_learns_the_planted_signal_beyond_a_shuffled_label_control(row_id, planted):
    corr = {k: planted[k]["test"]["corr"] or 0.0 for k in planted}  # a constant prediction has no r (null)
    mae = {k: planted[k]["test"]["mae"] for k in planted}
    print(f"{row_id}: test corr {corr}, MAE {mae}")
    # r is scale-free: a control fitted to shuffled labels may predict nearly a constant that still moves a little
    # with the planted stream, either way (measured: r down to -0.99); no sign of r beats none
    assert corr["planted"] - max(corr["shuffled"], 0.0) > MARGIN_CORR, corr
    assert mae["shuffled"] - mae["planted"] > MARGIN_MAE, mae


def test_the_av_mark_says_what_the_row_learnt_from_the_av_streams(row_id, planted):
    learnt, reliance = planted["planted"]["learnt"], planted["planted"]["reliance"]
    if reads_av(row_id):
        assert learnt["status"] == "learnt" and not learnt["av_not_learnt"], learnt
        assert learnt["streams"]["visual"]["learnt"], learnt  # the stream that carries the label
        assert reliance["visual"]["mae"] > 5 * abs(reliance["acoustic"]["mae"]), reliance  # not the noise stream
    else:
        assert learnt["status"] == "not_applicable" and not learnt["av_not_learnt"], learnt
        spec = rows.row(row_id).baseline
        assert learnt["note"] and (spec is None or learnt["note"] == spec.av_note), learnt  # says why
        for stream in ("acoustic", "visual"):  # permuting a stream across test segments changes no prediction
            deltas = [v for v in reliance[stream].values() if isinstance(v, (int, float))]
            assert deltas and all(v == 0 for v in deltas), reliance


def test_the_run_records_only_the_params_the_row_reads(row_id, planted):
    recorded = planted["planted"]["summary"]["params"]
    spec = rows.row(row_id).baseline
    if spec is None:
        assert set(rows.CPSL_SECTIONS) <= set(recorded) and rows.BASELINES_SECTION not in recorded
    else:
        assert not set(rows.CPSL_SECTIONS) & set(recorded) and set(recorded[rows.BASELINES_SECTION]) == {spec.section}
        assert recorded["train"]["epochs"] == PLANTED_EPOCHS.get(row_id, PLANTED_SCHEDULE["epochs"])  # its schedule


# ------------------------------------------------------------------------------------------------------ resume
@pytest.fixture(scope="module")
def resume(row_id, text_model, tmp_path_factory):
    """(folder, params, cache, uninterrupted run folder) of the row on a small learnable cache."""
    tmp = tmp_path_factory.mktemp(f"resume-{row_id}")
    cache = make_cache(tmp / "cache.h5", n_train=32, n_valid=8, learnable=True)
    params = small_params(text_model, **schedule_settings(row_id, **RESUME_SCHEDULE), ablations=[row_id])
    assert run_train(params, seed=SEED, ablation=row_id, data_path=cache, out_dir=tmp / "ref") == 0
    return tmp, params, cache, tmp / "ref"


def _same_nested(a, b, where="recipe"):
    """Recipe states (nested dicts/lists of tensors and numbers) equal, NaN equal to NaN."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _same_nested(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same_nested(x, y, f"{where}[{i}]")
    else:
        np.testing.assert_equal(a, b, err_msg=where)


def _same_as_uninterrupted(run, reference):
    best = run_folder.load_pt(run / run_folder.BEST_FILE)
    ref_best = run_folder.load_pt(reference / run_folder.BEST_FILE)
    assert best["epoch"] == ref_best["epoch"]
    np.testing.assert_equal(best["valid"], ref_best["valid"])  # NaN (a term not computed on validation) == NaN
    assert_same_tensors(best["model"], ref_best["model"])
    state, ref_state = run_folder.load_pt(run / run_folder.STATE_FILE), run_folder.load_pt(
        reference / run_folder.STATE_FILE)
    assert_same_tensors(state["model"], ref_state["model"])
    _same_nested(state["recipe"], ref_state["recipe"])  # per-segment labels, extra optimizers, memories
    # NaN columns (a term a row does not compute on validation) count as equal
    np.testing.assert_equal(run_folder.read_history(run / run_folder.HISTORY_FILE),
                            run_folder.read_history(reference / run_folder.HISTORY_FILE))


@contextlib.contextmanager
def sigterm_once_a_state_is_saved(run_dir):
    """SIGTERM this process as soon as the run saves its first state (the end of epoch 0): the signal lands in
    epoch 1. A signal that came after training ended would hit the no-op handler installed here, not pytest."""
    state, stop = run_dir / run_folder.STATE_FILE, threading.Event()

    def watch():
        while not stop.is_set():
            if state.exists():
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.002)

    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_mid_epoch_then_resume_equals_an_uninterrupted_run(row_id, resume):
    tmp, params, cache, reference = resume
    run = tmp / "sigterm"
    with sigterm_once_a_state_is_saved(run):
        assert run_train(params, seed=SEED, ablation=row_id, data_path=cache, out_dir=run) == 128 + signal.SIGTERM
    saved = run_folder.load_pt(run / run_folder.STATE_FILE)
    assert saved["epoch"] == 1 and 0 < saved["step_in_epoch"] < 8, (saved["epoch"], saved["step_in_epoch"])
    assert not (run / run_folder.SUMMARY_FILE).exists()  # stopped, not finished
    assert run_train(params, seed=SEED, ablation=row_id, data_path=cache, out_dir=run) == 0
    _same_as_uninterrupted(run, reference)


def test_sigkill_mid_epoch_then_rerun_equals_an_uninterrupted_run(row_id, resume, capfd):
    tmp, params, cache, reference = resume
    run = tmp / "sigkill"
    args = ["train", "--params", str(write_params(tmp / "params.yaml", params)), "--seed", str(SEED), "--ablation",
            row_id, "--data", str(cache), "--out", str(run)]
    kill_mid_epoch(args, run)  # a real `cpsl train`, killed a moment into epoch 1
    assert run_folder.load_pt(run / run_folder.STATE_FILE)["epoch"] == 1
    capfd.readouterr()
    assert run_train(params, seed=SEED, ablation=row_id, data_path=cache, out_dir=run) == 0  # the same code path
    assert "resuming" in capfd.readouterr().err
    _same_as_uninterrupted(run, reference)
