"""GPU leases for jobs on one machine: each `cpsl train` / `cpsl evaluate` gets its own device(s).

Snakemake's ``resources: gpu=N`` keeps the *number* of GPU jobs within ``--resources gpu=...``; this module
decides *which* devices a job gets. At start-up, unless a scheduler already chose (``CUDA_VISIBLE_DEVICES`` is
set, as SLURM does) or the job runs on the CPU, the job takes an exclusive ``fcntl.flock`` on one slot file
per device it needs, sets ``CUDA_VISIBLE_DEVICES`` to those devices (inherited by the torchrun it launches)
and keeps the locks until it exits. The kernel drops a flock when its last holder dies, so a killed job
frees its devices and a restarted Snakemake never hands out a device that a live job still holds.

Environment (none needed on an ordinary multi-GPU box; validated at start-up by cpsl.config.env_vars):

- ``CPSL_GPU_SLOTS``: jobs that may share one device (default 1). Declare ``--resources gpu=<GPUs x slots>``.
- ``CPSL_GPU_LOCK_DIR``: folder of the lock files (default ``/tmp/cpsl-gpu-locks-<uid>``: one per user and
  machine, so several checkouts and the temporary copies ``dvc queue`` runs experiments in never lease one
  device twice; name a folder here to coordinate with other users too, or to keep jobs apart).
- ``CPSL_GPU_COUNT``: number of devices (default: counted with ``nvidia-smi -L``); tests fake it.
- ``CPSL_GPU_LEASE=0``: never lease (use whatever CUDA picks).
- ``CPSL_GPU_WAIT_S``: give up after this many seconds when no device is free (default: wait).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cpsl.config.env_vars import env_value
from cpsl.errors import PipelineError
from cpsl.runtime.io_utils import open_lock_file

# Not $XDG_RUNTIME_DIR: a login shell has it, a cron job, nohup'ed or systemd-started one often not, and two jobs of
# one user that picked different folders would lease the same device. Not $TMPDIR either (it differs per session).
LOCK_BASE = Path("/tmp")


class GpuLeaseError(PipelineError):
    """No lease can ever be granted (more devices wanted than exist), or the wait timed out."""


def device_count() -> int:
    """Devices on this machine: ``CPSL_GPU_COUNT`` if set, else ``nvidia-smi -L``, else 0. Never imports
    torch: CUDA must not be initialised before ``CUDA_VISIBLE_DEVICES`` is set."""
    forced = env_value("CPSL_GPU_COUNT")
    if forced is not None:
        return forced
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return 0
    # MIG instances are listed indented under their GPU; count whole GPUs only.
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0


def slots_per_device() -> int:
    slots = env_value("CPSL_GPU_SLOTS")
    return 1 if slots is None else slots


def default_lock_dir(base: Path | None = None) -> Path:
    """The machine-wide lock folder of this user, created 0700 if absent. It sits at a predictable name in a
    world-writable folder, so one made by someone else (who could then hold or delete our locks), a link, or
    one that others may write into is refused in one line rather than used."""
    folder = (LOCK_BASE if base is None else base) / f"cpsl-gpu-locks-{os.getuid()}"
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(folder)
    fix = "remove it (or set CPSL_GPU_LOCK_DIR to a folder of your own) and rerun"
    if stat.S_ISLNK(info.st_mode):
        raise GpuLeaseError(f"{folder}: the GPU lock folder is a symbolic link (to {os.readlink(folder)}), not the "
                            f"folder cpsl makes; {fix}")
    if not stat.S_ISDIR(info.st_mode):
        raise GpuLeaseError(f"{folder}: the GPU lock folder is not a folder; {fix}")
    if info.st_uid != os.getuid():
        raise GpuLeaseError(f"{folder}: the GPU lock folder belongs to user id {info.st_uid}, not to you "
                            f"({os.getuid()}); {fix}")
    if info.st_mode & 0o022:
        raise GpuLeaseError(f"{folder}: the GPU lock folder is writable by other users (mode "
                            f"{stat.S_IMODE(info.st_mode):o}); chmod 700 it, or {fix}")
    return folder


def lock_dir() -> Path:
    """CPSL_GPU_LOCK_DIR when set (taken as named: it may be a folder shared on purpose), else the default."""
    return env_value("CPSL_GPU_LOCK_DIR") or default_lock_dir()


@dataclass
class Lease:
    """Devices held by this process; ``fds`` are the locked slot files (pass them to child processes
    that must keep the lease alive, e.g. torchrun workers)."""

    devices: list[int]
    fds: list[int] = field(default_factory=list)

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(str(d) for d in self.devices)

    def release(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the last descriptor drops the flock
        self.fds = []

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _try_lock(path: Path) -> int | None:
    fd = open_lock_file(path, 0o666)  # never through a link: the holder's PID is written into it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    # Who holds it, for a human looking at the folder; the lock itself is the flock, not this text.
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def try_lease(n: int, count: int, slots: int, folder: Path) -> Lease | None:
    """One free slot on each of ``n`` distinct devices, least-loaded devices first; None when fewer than
    ``n`` devices have a free slot (nothing is held then)."""
    folder.mkdir(parents=True, exist_ok=True)
    free: list[tuple[int, int, int]] = []  # (busy slots, device, fd of the slot we hold)
    for device in range(count):
        held, busy = None, 0
        for slot in range(slots):
            fd = _try_lock(folder / f"gpu{device}-slot{slot}.lock")
            if fd is None:
                busy += 1
            elif held is None:
                held = fd
            else:
                os.close(fd)  # only probing this device's load; keep one slot
        if held is not None:
            free.append((busy, device, held))
    free.sort()
    chosen, rest = free[:n], free[n:]
    for _, _, fd in rest:
        os.close(fd)
    if len(chosen) < n:
        for _, _, fd in chosen:
            os.close(fd)
        return None
    chosen.sort(key=lambda item: item[1])
    return Lease(devices=[d for _, d, _ in chosen], fds=[fd for _, _, fd in chosen])


def lease(n: int, count: int | None = None, slots: int | None = None, folder: Path | None = None,
          wait_s: float | None = None, poll_s: float = 1.0, log=sys.stderr) -> Lease:
    """Block until ``n`` distinct devices each have a free slot; return the lease."""
    count = device_count() if count is None else count
    slots = slots_per_device() if slots is None else slots
    folder = lock_dir() if folder is None else Path(folder)
    if n > count:
        raise GpuLeaseError(f"this job needs {n} GPUs but the machine has {count}")
    if wait_s is None:
        wait_s = env_value("CPSL_GPU_WAIT_S")
    start, told = time.monotonic(), False
    while True:
        got = try_lease(n, count, slots, folder)
        if got is not None:
            return got
        if wait_s is not None and time.monotonic() - start >= wait_s:
            raise GpuLeaseError(f"no {n} free GPU(s) of {count} x {slots} slot(s) in {folder} after {wait_s:.0f} s")
        if not told:
            print(f"cpsl: waiting for {n} free GPU(s) ({count} devices x {slots} slot(s), locks in {folder}); "
                  f"declare --resources gpu=<GPUs x slots> so Snakemake does not start more GPU jobs than fit",
                  file=log, flush=True)
            told = True
        time.sleep(poll_s)


def should_lease(device_preference: str) -> bool:
    """Lease unless told not to, on the CPU, under torchrun (the launcher holds it), or when a scheduler
    (SLURM, a user) already set ``CUDA_VISIBLE_DEVICES``."""
    return (env_value("CPSL_GPU_LEASE") is not False and device_preference != "cpu"
            and "WORLD_SIZE" not in os.environ and "CUDA_VISIBLE_DEVICES" not in os.environ)


@contextlib.contextmanager
def job_devices(n: int, device_preference: str, what: str = "cpsl"):
    """For the duration of a job: lease ``n`` devices and set ``CUDA_VISIBLE_DEVICES`` (yields the Lease,
    or None when nothing was leased: CPU job, no GPU on the machine, or devices chosen by a scheduler)."""
    if not should_lease(device_preference):
        if "CUDA_VISIBLE_DEVICES" in os.environ and "WORLD_SIZE" not in os.environ:
            print(f"{what}: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']} set by the scheduler",
                  file=sys.stderr, flush=True)
        yield None
        return
    count = device_count()
    if count == 0:  # a CPU machine: execution.device auto falls back to the CPU, cuda fails later with its message
        yield None
        return
    held = lease(n, count=count)
    os.environ["CUDA_VISIBLE_DEVICES"] = held.cuda_visible_devices
    print(f"{what}: leased GPU(s) {held.cuda_visible_devices} (CUDA_VISIBLE_DEVICES)", file=sys.stderr, flush=True)
    try:
        yield held
    finally:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        held.release()
