"""``execution.nproc`` against the machine: at most one training process per device it would run on.

The schema only bounds nproc by 1024; ``execution.nproc: 1000`` on a 2-core machine would have torchrun start
1,000 trainers. ``cpsl train`` checks it before launching any: on GPUs (``execution.device: cuda``, or ``auto``
where a GPU is visible) the bound is the GPUs this job may use (``CUDA_VISIBLE_DEVICES`` as a scheduler set it,
else the machine's: cpsl.runtime.gpu_slots.device_count), on the CPU the cores this process may run on. Checked where
the
processes start, not in params validation: the report, or a Snakemake on a cluster's login node, reads the same
params on a machine that trains nothing.
"""
from __future__ import annotations

import os

from cpsl.errors import ParamsError
from cpsl.runtime.gpu_slots import device_count


def visible_gpus() -> int:
    chosen = os.environ.get("CUDA_VISIBLE_DEVICES")
    if chosen is None:
        return device_count()
    return len([d for d in chosen.split(",") if d.strip() and not d.strip().startswith("-")])


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_nproc(nproc: int, device: str, source: str) -> None:
    """Raise ParamsError (one line naming the key, the value and the bound) when ``nproc`` processes exceed the
    devices they would run on."""
    if nproc <= 1:
        return
    gpus = visible_gpus() if device != "cpu" else 0
    if device == "cuda" or gpus > 0:
        bound, what = gpus, f"{gpus} GPU(s) visible"
    else:
        bound, what = cpu_cores(), f"{cpu_cores()} CPU core(s)"
    if nproc > bound:
        raise ParamsError(f"{source}: 'execution.nproc' is {nproc}, but this machine has {what} for execution.device "
                          f"{device} (one training process each); set execution.nproc to at most {max(bound, 1)}")
