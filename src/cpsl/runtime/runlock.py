"""One writer at a time per run folder: ``cpsl train`` and ``cpsl evaluate`` hold an exclusive lock on
``<run>/.cpsl.lock`` while they write there.

Without it, two trainings of the same folder with different params both "succeed", and best.pt ends up from
one run while train_summary.json/history.csv come from the other. ``fcntl.flock`` locks belong to the open
file, so the kernel drops them when the holder dies (SIGKILL included): a lock file left by a dead process
never blocks. The holder's PID and command are written into the file only for the error message. (flock is
advisory and per host; on NFS it is emulated with POSIX locks, which Linux supports since 2.6.12.)
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from cpsl.errors import PipelineError
from cpsl.runtime.io_utils import open_lock_file, refuse_symlink

LOCK_NAME = ".cpsl.lock"


class RunFolderBusy(PipelineError):
    """Another process is writing the same run folder."""


@contextlib.contextmanager
def run_folder_lock(run_dir: str | Path, what: str) -> Iterator[Path]:
    """Hold the exclusive lock of ``run_dir`` (created if needed) for the body; fail at once if taken."""
    run_dir = Path(run_dir)
    refuse_symlink(run_dir, "run folder")  # else best.pt, history and state are written in the link's target
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = open_lock_file(path)  # never through a link: the file is truncated and rewritten below
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            raise RunFolderBusy(
                f"{run_dir}: run folder in use by {holder or 'another process'}; wait for it to finish (or stop "
                f"it), then rerun") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} (cpsl {what})\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # the file stays (removing it would race with a waiting opener)
    finally:
        os.close(fd)  # releases the lock


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
