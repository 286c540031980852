"""Process-group plumbing for multi-process training (torchrun).

- ``cpsl train`` with ``execution.nproc > 1`` outside torchrun (no WORLD_SIZE in the environment) re-launches the
  same command through ``python -m torch.distributed.run --standalone --nproc_per_node N`` and waits for it.
- Under torchrun each process reads RANK / LOCAL_RANK / WORLD_SIZE, takes its device (cuda:LOCAL_RANK, or the
  CPU) and joins the group with NCCL on GPUs and gloo on CPU.
- Multi-node: run torchrun yourself (``--nnodes``, ``--rdzv-backend c10d --rdzv-endpoint host:port``); the
  world size is then whatever torchrun says, and ``train.batch_size`` is split over all of it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def under_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """``execution.device``: auto -> CUDA when available; asking for cuda without one is an error."""
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("execution.device is 'cuda' but torch sees no CUDA device (set execution.device: auto or "
                           "cpu)")
    return torch.device("cuda", local_rank)


def init_from_env(device_preference: str) -> DistContext:
    """Single process unless torchrun set WORLD_SIZE > 1; then join the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum over ranks in place (a no-op for one process); returns the tensor."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(obj, ctx: DistContext) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def torchrun_command(nproc: int, cli_args: list[str]) -> list[str]:
    """The torchrun command line that re-runs ``cpsl <cli_args>`` in ``nproc`` local processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "cpsl.cli", *cli_args]


def relaunch(nproc: int, cli_args: list[str], pass_fds=()) -> int:
    """Run ``cpsl <cli_args>`` under torchrun and return its exit code. SIGTERM/SIGINT received here are
    passed on to torchrun (which forwards them to the workers, so they checkpoint before exiting).
    ``pass_fds`` (the GPU lease's lock files) stay open in torchrun, so the lease outlives this process
    for as long as torchrun (the workers' parent) runs."""
    proc = subprocess.Popen(torchrun_command(nproc, cli_args), pass_fds=tuple(pass_fds))

    def forward(signum, _frame):
        proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def all_gather_tensor(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Every rank's ``tensor`` (the same shape on every rank) concatenated along dim 0 in rank order; the tensor
    itself with one process. For recipes whose per-step state must stay identical on every rank (each rank sees
    other segments: gather the updates, then apply all of them everywhere)."""
    if not ctx.distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(ctx.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)
