"""The ``train`` stage: `cpsl train --seed K [--ablation ID] [--data X.h5] [--out DIR]`.

- GPUs: unless a scheduler set ``CUDA_VISIBLE_DEVICES`` (SLURM does), the job leases ``execution.nproc`` free devices
  of this machine for its lifetime (cpsl.runtime.gpu_slots), so concurrent Snakemake jobs never share one by accident.
- ``execution.nproc > 1`` outside torchrun: re-launch this same command under
  ``python -m torch.distributed.run --standalone --nproc_per_node N`` and return its exit code.
- A finished run (train_summary.json with the same fingerprint: params, ablation, seed, cache, code; every
  declared output present; best.pt a regular file that loads with weights_only and records the fingerprint) is
  not retrained. Anything less is trained (a damaged or symlinked best.pt: saying so): an engine deletes a
  stage's outputs before rerunning it, and the rerun must write them all.
- A run that trains (from scratch or resumed) first removes the folder's metrics.json and predictions.csv: they
  described an earlier best.pt. The fingerprint covers the cache's content (sha256, kept in a stat record beside
  the cache: cpsl.formats.cache.content_identity), so an edit in place that keeps size, attributes and mtime is another
  run.
- A run folder holding state/last.pt of the same run continues it, when the outputs that state vouches for
  are intact (cpsl.train.checkpoint.resume); otherwise the run starts from scratch.

- Started by a workflow engine (Snakemake, DVC), the run stops with its state saved when that engine process
  disappears (cpsl.runtime.engine_guard: Snakemake SIGKILLed), instead of running on unsupervised.
- The run folder is locked (cpsl.runtime.runlock) by the writing process (rank 0) for the whole run, so a second
  writer fails at once naming the holder's PID; temporaries a SIGKILLed run left are removed under the lock.
- Before any epoch: the folder must be writable with room for a checkpoint and a state, and every token id
  of the cache must exist in the text model's vocabulary.

The checkpoint records the text model by its configured name (HF id, ``package:<module>`` or a folder as
written in params.yaml), never the folder it resolved to in this venv: evaluate resolves it again.

Exit codes: 0 done (or already done), 3 collapse guard, 128 + signal when interrupted (state saved).
Under torchrun, torchrun itself turns a failing worker into its own exit code (1).
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from cpsl.config import paths
from cpsl.config.rows import canonical
from cpsl.config.text_model import resolve_model_path, text_model_for, text_model_size
from cpsl.formats import run_folder
from cpsl.formats.cache import check_token_ids
from cpsl.formats.text_model_safety import check_text_model
from cpsl.runtime import engine_guard, gpu_slots
from cpsl.runtime.io_utils import check_free_space, remove_stale_temporaries
from cpsl.runtime.nproc_bound import check_nproc
from cpsl.runtime.runlock import run_folder_lock
from cpsl.train import distributed
from cpsl.train.loop import RunSpec, fit, run_fingerprint


def _cli_args(seed: int, ablation: str, data_path: Path, out_dir: Path, params_file: str, overrides) -> list[str]:
    args = ["train", "--params", str(params_file), "--seed", str(seed), "--ablation", ablation,
            "--data", str(data_path), "--out", str(out_dir)]
    for item in overrides:
        args += ["--set", item]
    return args


def run_train(params: dict, seed: int, ablation: str | None = None, data_path=None, out_dir=None,
              params_file: str = "params.yaml", overrides=()) -> int:
    # B1/C3/C4 have the switches of A1/A2/A5: trained once, under that ID (cpsl.config.ablations.ALIASES)
    ablation = canonical(ablation or params["ablations"][0])
    data_path = Path(data_path) if data_path else paths.processed_path(params["dataset"])
    out_dir = Path(out_dir) if out_dir else paths.run_dir(params["dataset"], ablation, seed)
    nproc = params["execution"]["nproc"]
    if not distributed.under_torchrun():  # before launching anything: no more processes than devices (or cores)
        check_nproc(nproc, params["execution"]["device"], str(params_file))
    # Snakemake runs this through a shell: if Snakemake is SIGKILLed, stop as on SIGTERM (state saved; a torchrun
    # launcher passes SIGTERM on to the workers)
    engine_guard.stop_when_engine_dies("cpsl train")
    with gpu_slots.job_devices(nproc, params["execution"]["device"], "cpsl train") as held:
        return _run_train(params, seed, ablation, data_path, out_dir, params_file, overrides, nproc, held)


def _run_train(params, seed, ablation, data_path, out_dir, params_file, overrides, nproc, held) -> int:
    if nproc > 1 and not distributed.under_torchrun():
        print(f"cpsl train: launching {nproc} processes with torchrun", file=sys.stderr, flush=True)
        # torchrun inherits the lock files: the lease holds while it runs, even if this process is killed.
        return distributed.relaunch(nproc, _cli_args(seed, ablation, data_path, out_dir, params_file, overrides),
                                    pass_fds=held.fds if held else ())

    text_model = text_model_for(params)
    resolved = resolve_model_path(text_model)  # fails early, naming the model, when it cannot be found
    spec = RunSpec(params=params, ablation=ablation, seed=seed, data_path=data_path, run_dir=out_dir,
                   text_model=text_model)
    writer = os.environ.get("RANK", "0") == "0"  # rank 0 alone writes the run folder
    with run_folder_lock(out_dir, "train") if writer else contextlib.nullcontext():
        if writer:
            remove_stale_temporaries(out_dir, run_folder.TRAIN_FILES)
        return _train_locked(spec, resolved, writer, fit, run_fingerprint)


def _train_locked(spec, resolved_model: str, writer: bool, fit, run_fingerprint) -> int:
    params, out_dir, data_path = spec.params, spec.run_dir, spec.data_path
    done, damaged = run_folder.finished_summary(out_dir, run_fingerprint(spec))
    if done is not None:
        print(f"cpsl train: {out_dir} is already trained with these params (best epoch {done['best_epoch']}); "
              f"nothing to do", file=sys.stderr)
        return 0
    if damaged:
        print(f"cpsl train: {damaged}; training this run again", file=sys.stderr, flush=True)
    check_text_model(resolved_model, spec.text_model)  # before sizes are read from it or anything is written
    vocab_size, model_bytes = text_model_size(resolved_model)
    if vocab_size is not None:
        check_token_ids(data_path, vocab_size, spec.text_model)
    if writer:
        # the first epoch writes best.pt (weights) and state/last.pt (weights + two AdamW moments); later
        # epochs need the same room for the temporaries that replace them: fail now, not after an epoch
        check_free_space(out_dir, 4 * model_bytes, "a checkpoint and a training state")

    if writer:
        # this training writes a new best.pt: metrics of the earlier one must not survive to be reported for it
        removed = run_folder.clear_evaluate_outputs(out_dir)
        if removed:
            print(f"cpsl train: {out_dir}: removed {', '.join(removed)} of the earlier checkpoint (run `cpsl "
                  f"evaluate` again after this training)", file=sys.stderr, flush=True)
    ctx = distributed.init_from_env(params["execution"]["device"])
    try:
        return fit(spec, ctx).exit_code
    finally:
        distributed.shutdown(ctx)
