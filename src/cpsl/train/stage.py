"""The ``train`` stage: `cpsl train --seed K [--ablation ID] [--data X.h5] [--out DIR]`.

- GPUs: unless a scheduler set ``CUDA_VISIBLE_DEVICES`` (SLURM does), the job leases ``train.nproc`` free devices
  of this machine for its lifetime (cpsl.gpu_slots), so concurrent Snakemake jobs never share one by accident.
- ``train.nproc > 1`` outside torchrun: re-launch this same command under
  ``python -m torch.distributed.run --standalone --nproc_per_node N`` and return its exit code.
- A finished run (train_summary.json with the same fingerprint: params, ablation, seed, cache) is not retrained.
- A run folder holding state/last.pt of the same run continues it (see cpsl.train.loop).

Exit codes: 0 done (or already done), 3 collapse guard, 128 + signal when interrupted (state saved).
Under torchrun, torchrun itself turns a failing worker into its own exit code (1).
"""
from __future__ import annotations

import sys
from pathlib import Path

from cpsl import gpu_slots, paths
from cpsl.config import resolve_model_path, text_model_for
from cpsl.train import checkpoint as ckpt
from cpsl.train import distributed


def _cli_args(seed: int, ablation: str, data_path: Path, out_dir: Path, params_file: str, overrides) -> list[str]:
    args = ["train", "--params", str(params_file), "--seed", str(seed), "--ablation", ablation,
            "--data", str(data_path), "--out", str(out_dir)]
    for item in overrides:
        args += ["--set", item]
    return args


def run_train(params: dict, seed: int, ablation: str | None = None, data_path=None, out_dir=None,
              params_file: str = "params.yaml", overrides=()) -> int:
    ablation = ablation or params["ablation"]
    data_path = Path(data_path) if data_path else paths.processed_path(params["dataset"])
    out_dir = Path(out_dir) if out_dir else paths.run_dir(params["dataset"], ablation, seed)
    nproc = params["train"]["nproc"]
    with gpu_slots.job_devices(nproc, params["train"]["device"], "cpsl train") as held:
        return _run_train(params, seed, ablation, data_path, out_dir, params_file, overrides, nproc, held)


def _run_train(params, seed, ablation, data_path, out_dir, params_file, overrides, nproc, held) -> int:
    if nproc > 1 and not distributed.under_torchrun():
        print(f"cpsl train: launching {nproc} processes with torchrun", file=sys.stderr, flush=True)
        # torchrun inherits the lock files: the lease holds while it runs, even if this process is killed.
        return distributed.relaunch(nproc, _cli_args(seed, ablation, data_path, out_dir, params_file, overrides),
                                    pass_fds=held.fds if held else ())

    from cpsl.train.loop import RunSpec, fit, run_fingerprint  # torch/transformers only past this point

    spec = RunSpec(params=params, ablation=ablation, seed=seed, data_path=data_path, run_dir=out_dir,
                   text_model=resolve_model_path(text_model_for(params)))
    done = ckpt.finished_summary(out_dir, run_fingerprint(spec))
    if done is not None:
        print(f"cpsl train: {out_dir} is already trained with these params (best epoch {done['best_epoch']}); "
              f"nothing to do", file=sys.stderr)
        return 0

    ctx = distributed.init_from_env(params["train"]["device"])
    try:
        return fit(spec, ctx).exit_code
    finally:
        distributed.shutdown(ctx)
