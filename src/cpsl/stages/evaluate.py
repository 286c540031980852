"""Stage ``evaluate``: metrics of a run's validation-selected checkpoint on the valid and test splits.

Reads ``<run>/best.pt`` (``torch.load(weights_only=True)``: tensors and plain values only) and the cache;
rebuilds the model from the checkpoint's own ``meta`` (its params, ablation and feature sizes, so a later
edit of params.yaml cannot silently change the architecture) with ``pretrained=False`` - the text
model's config is read from its local folder / the HF cache and no weights are downloaded, since the
state dict carries all of them (the min-max running statistics too). Only the ``eval`` and ``execution`` sections
come from the current params: ``execution.eval_batch_size`` cannot change the predictions beyond float round-off
with the default ``model.eval_norm: running``; with ``batch`` the checkpoint's own ``train.batch_size`` is used.

The checkpoint must be the configured run's (cpsl.formats.run_identity.check_same_run): the identity recorded in its
meta
(params train reads, row, seed, the cache's content, train's code) equals the one these params, this run folder's
name, this cache and this code give; otherwise one line names best.pt and what differs (``cp.eta: run 0.3, params
0.5``). metrics.json then records that identity ("run"), for the report to check.

Modality-reliance check (cpsl.evaluate.reliance): the test metrics again with the acoustic, then the visual
stream permuted across test segments (``eval.reliance_permutations`` draws); the deltas go to metrics.json.
Whether the a/v path learnt anything (cpsl.metrics.av_learnt: the unimodal heads' training MAEs in the run's
history.csv against the best constant predictor's, and the reliance draws against their noise) goes to
metrics.json ``learnt``; a marked run also gets one line on stderr naming the setting to change.

Writes, atomically, ``<run>/metrics.json``::

    {"valid": {metric: value}, "test": {metric: value}, "selected_epoch": int,
     "ablation": str, "seed": int, "dataset": str, "execution": {how this evaluation ran},
     "run": {"fingerprint": str, "identity": {the checkpoint's run identity}},
     "reliance": {"acoustic": {metric: delta}, "visual": {metric: delta}, "permutations": int, ...},
     "learnt": {"status": "learnt" | "not_learnt" | "not_applicable" | "unknown", "av_not_learnt": bool, ...},
     "input_range": {"mode": eval_norm, "acoustic"/"visual": {split: {"share_outside", "max_abs"}}} | null}

(``input_range``: cpsl.evaluate.input_range, the share of normalised train/valid/test inputs outside the training
range [0, 1]; null for a baseline; a share above 1 % also gets one line on stderr)

(metric names and conventions in cpsl.metrics.scores; undefined values are null) and
``<run>/predictions.csv`` with columns ``split, segment_id, label, prediction`` (valid rows, then test
rows, in cache order). Runs on CUDA when available, else CPU.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import torch

from cpsl.config import paths, rows
from cpsl.config.ablations import Switches, switches_for
from cpsl.errors import PipelineError
from cpsl.evaluate import input_range
from cpsl.evaluate.reliance import reliance_check
from cpsl.formats import run_folder, run_identity
from cpsl.formats.cache import check_token_ids, content_identity, read_attrs, read_labels, read_split
from cpsl.metrics import av_learnt
from cpsl.metrics.scores import compute_metrics, json_safe
from cpsl.nn import zoo
from cpsl.nn.inference import inference_batch_size, run_inference
from cpsl.runtime import deps, gpu_slots
from cpsl.runtime.io_utils import refuse_symlink, remove_stale_temporaries
from cpsl.runtime.runlock import run_folder_lock

EVAL_SPLITS = ("valid", "test")


class EvaluateError(PipelineError, ValueError):
    """A missing or inconsistent checkpoint / cache; the message names the file."""


def _switches(meta: dict) -> Switches | None:
    # A CP+SL checkpoint's own switch record wins (if the trainer stored one); the row ID's otherwise.
    stored = meta.get("switches")
    return Switches(**stored) if isinstance(stored, dict) else None


def rebuild_model(ckpt: dict, path: Path) -> torch.nn.Module:
    meta = ckpt["meta"]
    model = zoo.build(meta["params"], meta["ablation"], int(meta["acoustic_dim"]), int(meta["visual_dim"]),
                      meta["text_model"], pretrained=False, switches=_switches(meta))
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        raise EvaluateError(f"{path}: state dict does not fit the model rebuilt from its meta: {exc}") from exc
    return model


def _check_cache(data_path: Path, meta: dict) -> None:
    attrs = read_attrs(data_path)
    for key in ("acoustic_dim", "visual_dim"):
        if int(attrs[key]) != int(meta[key]):
            raise EvaluateError(f"{data_path}: cache {key} is {attrs[key]} but the checkpoint was trained with "
                                f"{meta[key]}")
    trained_on = meta["params"].get("dataset")
    if trained_on is not None and attrs.get("dataset") != trained_on:
        raise EvaluateError(f"{data_path}: cache of dataset {attrs.get('dataset')!r}, checkpoint trained on "
                            f"{trained_on!r}")


def configured_identity(params: dict, run_dir: Path, meta: dict, data_path: Path) -> dict:
    """The identity (cpsl.formats.run_identity) of the run these params configure in ``run_dir``: the row and seed its
    name says (``<row>-seed<k>``; another name: the checkpoint's own), the cache being evaluated and the train
    stage's code as it is now."""
    named = run_folder.named_run(run_dir)
    ablation, seed = named if named and named[0] in rows.ROWS else (meta["ablation"], int(meta["seed"]))
    return run_identity.identity(params, ablation, seed, cache=content_identity(data_path),
                                 code=deps.code_hash("train", ablation))


def run_evaluate(params: dict, run_dir, data_path=None) -> dict:
    """Evaluate one run folder; return the metrics dict written to metrics.json."""

    run_dir = Path(run_dir)
    ckpt = run_folder.load_best(run_dir)
    meta = ckpt["meta"]
    dataset = params["dataset"]  # the DAG's dataset; _check_cache rejects a checkpoint of another one
    data_path = Path(data_path) if data_path is not None else paths.processed_path(dataset)
    _check_cache(data_path, meta)
    model = rebuild_model(ckpt, run_dir / run_folder.BEST_FILE)
    # an unknown token id would fail deep inside the embedding lookup: name the split and segment instead
    check_token_ids(data_path, int(model.text_encoder.config.vocab_size), str(meta["text_model"]))
    # the checkpoint must be the configured run's (params, row, seed, cache content, train code): metrics.json
    # reports it under these params
    run_identity.check_same_run(str(run_dir / run_folder.BEST_FILE), meta.get("identity"),
                                configured_identity(params, run_dir, meta, data_path),
                                f"{run_folder.retrain_hint(run_dir)}; or evaluate it under the params it was "
                                f"trained with")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)

    result: dict = {"ablation": meta["ablation"], "seed": int(meta["seed"]), "dataset": dataset,
                    "selected_epoch": int(ckpt["epoch"]),
                    # which training these metrics describe: the report checks it against params.yaml and the
                    # run's train_summary.json
                    "run": {"fingerprint": meta.get("fingerprint"), "identity": meta["identity"]}}
    # the checkpoint's own normalisation mode and training batch; this call's execution section
    batch_size = inference_batch_size({**meta["params"], "execution": params["execution"]})
    # how this evaluation ran (no param: it changes no prediction beyond float round-off)
    result["execution"] = {"device": params["execution"]["device"], "ran_on": str(device),
                           "eval_batch_size": params["execution"]["eval_batch_size"], "batch_size_used": batch_size}

    def predict(arrays: dict) -> np.ndarray:
        return np.asarray(run_inference(model, arrays, batch_size, device).prediction, dtype=np.float32).reshape(-1)

    rows: list[tuple] = []
    split_arrays = {"train": read_split(data_path, "train")}  # the input-range telemetry's reference split
    for split in EVAL_SPLITS:
        arrays = split_arrays[split] = read_split(data_path, split)
        pred = predict(arrays)
        if pred.size != len(arrays["segment_id"]):
            raise EvaluateError(f"{data_path}: split '{split}' has {len(arrays['segment_id'])} segments but "
                                f"inference returned {pred.size} predictions")
        result[split] = compute_metrics(pred, arrays["label"])
        rows += list(zip([split] * pred.size, arrays["segment_id"], arrays["label"].tolist(), pred.tolist()))
        if split == "test":
            result["reliance"] = reliance_check(predict, arrays, result["test"], compute_metrics,
                                                params["eval"]["reliance_permutations"])

    # the trainer records the selected epoch's validation metrics under "valid/<metric>"
    trained_mae = (ckpt.get("valid") or {}).get("valid/mae")
    tolerance = 1e-3 * max(1.0, abs(float(trained_mae or 0.0)))
    if trained_mae is not None and abs(float(trained_mae) - result["valid"]["mae"]) > tolerance:
        # Not fatal (e.g. CPU vs GPU round-off), but a large gap means the checkpoint or the cache changed.
        print(f"cpsl evaluate: warning: {run_dir}: valid MAE {result['valid']['mae']:.6f} differs from the "
              f"{float(trained_mae):.6f} recorded at training time", file=sys.stderr)

    result["input_range"] = input_range.out_of_range(model, split_arrays, batch_size)
    range_line = input_range.warning(result["input_range"], str(run_dir))
    if range_line:
        print(f"cpsl evaluate: warning: {range_line}", file=sys.stderr)

    result["learnt"] = _assess_learnt(run_dir, ckpt, data_path, result["reliance"])
    if result["learnt"]["av_not_learnt"]:
        print(f"cpsl evaluate: warning: {av_learnt.hint_line(str(run_dir), _rate_setting(meta['ablation'], dataset))}",
              file=sys.stderr)

    run_folder.write_predictions(run_dir, rows)
    result = json_safe(result)
    run_folder.write_metrics(run_dir, result)
    return result


def _assess_learnt(run_dir: Path, ckpt: dict, data_path: Path, reliance: dict) -> dict:
    """cpsl.metrics.av_learnt's verdict; the unimodal heads' telemetry comes from the run's history.csv (absent:
    the reliance draws alone decide)."""
    history_path = run_dir / run_folder.HISTORY_FILE
    history = run_folder.read_history(history_path) if history_path.is_file() else None
    has_av, note = _reads_av(ckpt["meta"])
    constant = av_learnt.constant_predictor_mae(read_labels(data_path, "train"))
    return av_learnt.assess(has_av, history, reliance, constant, note=note)


def _rate_setting(row_id: str, dataset: str) -> str:
    """The param that sets the learning rate of the row's new modules (a baseline: its own train section)."""
    spec = rows.row(row_id).baseline
    if spec is None:
        return av_learnt.SETTING
    return f"{rows.BASELINES_SECTION}.{spec.section}.{rows.hyper_dataset(dataset)}.train.lr_new_modules"


def _reads_av(meta: dict) -> tuple[bool, str | None]:
    """Does the row's prediction read the acoustic/visual streams (and if not, why)?"""
    row_id = meta["ablation"]
    spec = rows.row(row_id).baseline
    if spec is not None:
        return spec.reads_av_at_inference, (spec.av_note or None)
    switches = _switches(meta) or switches_for(rows.canonical(row_id))
    return switches.av, None


def evaluate_command(params: dict, run_dir, data_path=None) -> dict:
    """``cpsl evaluate``: :func:`run_evaluate` as the only writer of the run folder's evaluate outputs (a lock;
    temporaries a SIGKILLed evaluate left are removed), on a leased GPU so it does not land on a training
    job's device."""
    run_dir = Path(run_dir)
    refuse_symlink(run_dir, "run folder")  # before anything is read from, or written to, the link's target
    with run_folder_lock(run_dir, "evaluate") if run_dir.is_dir() else contextlib.nullcontext(), \
            gpu_slots.job_devices(1, params["execution"]["device"], "cpsl evaluate"):
        remove_stale_temporaries(run_dir, run_folder.EVALUATE_OUTPUTS)
        return run_evaluate(params, run_dir=run_dir, data_path=data_path)
