"""One workflow run per project at a time, and no trainer left running after its engine died.

Project lock ``<project>/.cpsl/engine.lock`` (an ``fcntl.flock``; the kernel drops it when its holder dies):

* Snakemake's main process takes it exclusively while it parses the Snakefile, and holds it until it exits
  (:func:`hold_for_snakemake`; the job steps a cluster executor starts re-parse the Snakefile in another mode and
  take nothing);
* every ``cpsl`` stage takes it shared for its own lifetime (:func:`stage_guard`), unless a Snakemake job started
  it (that Snakemake holds the lock).

So a second ``snakemake`` while one runs, or a ``dvc repro`` / hand-run stage while a Snakemake runs, or a
``snakemake`` while a DVC or hand-run stage runs, fails at once with "busy: PID N (snakemake --cores 2) is
running in this project; wait for it to finish or stop it", instead of Snakemake's advice to
``--rerun-incomplete`` (wrong while the first run is alive) or two engines writing the same files. Two DVC runs
meet DVC's own lock; stages of the same kind share the lock and meet the run-folder lock (cpsl.runtime.runlock).

Watchdog (:func:`watch_engine`, used by ``cpsl train``): Snakemake runs a job through a shell, so when Snakemake is
SIGKILLed nothing tells the trainer (a parent-death signal would reach only the shell). The trainer finds the
engine among its ancestors (a process running ``snakemake`` or ``dvc``) and polls it; when it is gone the trainer
stops as on SIGTERM: it saves its state and exits (rerun to resume). Under SLURM the ancestor is the job step's own
Snakemake on the compute node, so a job outlives a killed login-node Snakemake as SLURM intends (``scancel`` it).
Linux only (``/proc``); elsewhere there is no watchdog and docs/running.md says how to find and stop a trainer.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from cpsl.errors import PipelineError
from cpsl.runtime.io_utils import open_lock_file, refuse_symlink

LOCK_FILE = Path(".cpsl") / "engine.lock"
ENGINES = ("snakemake", "dvc")
_HELD: dict[Path, int] = {}  # project root -> fd, for a process that parses the Snakefile twice


class ProjectBusy(PipelineError):
    """Another workflow run holds the project."""


@dataclass(frozen=True)
class Process:
    pid: int
    start: str  # /proc/<pid>/stat start time: tells the process apart from a later one with the same PID
    command: str
    engine: str | None


def _stat(pid: int) -> tuple[str, int, str] | None:
    """(state, parent pid, start time) of a process, or None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    return fields[0], int(fields[1]), fields[19]


def _argv(pid: int) -> list[str]:
    try:
        return [a.decode("utf-8", "replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def _engine_of(argv: list[str]) -> str | None:
    """'snakemake' or 'dvc' when the command runs one (as a script, through python, or python -m)."""
    words = [os.path.basename(a) for a in argv[:2]]
    if len(argv) >= 3 and argv[1] == "-m":
        words.append(argv[2])
    return next((w for w in words if w in ENGINES), None)


def _describe(argv: list[str]) -> str:
    """A short command line: the program (an engine or script, not the python running it) and its first
    arguments, e.g. ``snakemake --cores 2`` or ``cpsl train --ablation A6 --seed 0``."""
    if not argv:
        return "?"
    start = 0
    if os.path.basename(argv[0]).startswith("python") and len(argv) > 1:
        start = 2 if argv[1] == "-m" and len(argv) > 2 else 1
    text = " ".join(" ".join([os.path.basename(argv[start]), *argv[start + 1:start + 6]]).split())
    return text if len(text) <= 80 else text[:77] + "..."


def process(pid: int) -> Process | None:
    stat = _stat(pid)
    if stat is None:
        return None
    argv = _argv(pid)
    return Process(pid, stat[2], _describe(argv), _engine_of(argv))


def alive(proc: Process) -> bool:
    stat = _stat(proc.pid)
    return stat is not None and stat[0] not in ("Z", "X") and stat[2] == proc.start


def engine_ancestor(pid: int | None = None) -> Process | None:
    """The nearest ancestor of ``pid`` (default: this process) that runs a workflow engine, or None."""
    stat = _stat(os.getpid() if pid is None else pid)
    seen = set()
    while stat is not None and stat[1] > 1 and stat[1] not in seen:
        seen.add(stat[1])
        parent = process(stat[1])
        if parent is None:
            return None
        if parent.engine:
            return parent
        stat = _stat(parent.pid)
    return None


# ----------------------------------------------------------------------------------------------- project lock
def _holders(path: Path) -> str:
    """Who holds a lock on ``path``: the PIDs /proc/locks lists for its inode, described; else the text the
    exclusive holder wrote into the file."""
    try:
        st = path.stat()
        key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        pids = sorted({int(line.split()[4]) for line in Path("/proc/locks").read_text().splitlines()
                       if len(line.split()) > 5 and line.split()[5] == key and line.split()[1] == "FLOCK"})
    except (OSError, ValueError, IndexError):
        pids = []
    described = [f"PID {p} ({proc.command})" for p in pids if p != os.getpid() and (proc := process(p))]
    if described:
        return ", ".join(described[:3]) + (f" and {len(described) - 3} more" if len(described) > 3 else "")
    try:
        return path.read_text().strip() or "another process"
    except OSError:
        return "another process"


def _busy(root: Path, path: Path) -> ProjectBusy:
    return ProjectBusy(f"busy: {_holders(path)} is running in this project ({root}) and holds {LOCK_FILE}; wait "
                       f"for it to finish or stop it, then rerun")


def _open(root: Path) -> tuple[Path, int]:
    path = root / LOCK_FILE
    refuse_symlink(path.parent, "the project's lock folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, open_lock_file(path)  # never through a link: Snakemake's holder truncates and rewrites it


def hold_for_snakemake(root: str | Path = ".") -> None:
    """Take the project lock exclusively for the rest of this (Snakemake main) process, or raise ProjectBusy."""
    root = Path(root).resolve()
    if root in _HELD:
        return
    path, fd = _open(root)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _busy(root, path) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"PID {os.getpid()} ({_describe(_argv(os.getpid()))})\n".encode(), 0)
    _HELD[root] = fd  # never closed: the kernel drops the lock when this process ends


@contextlib.contextmanager
def stage_guard(root: str | Path = ".") -> Iterator[None]:
    """Hold the project lock shared while a stage runs, unless a Snakemake job runs it; ProjectBusy when a
    Snakemake (not this stage's own) holds the project."""
    ancestor = engine_ancestor()
    if ancestor is not None and ancestor.engine == "snakemake":
        yield  # a job of the Snakemake run that holds the lock
        return
    root = Path(root).resolve()
    path, fd = _open(root)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(root, path) from None
        yield
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------- watchdog
def watch_engine(on_gone: Callable[[Process], None], poll_s: float = 1.0) -> Process | None:
    """Call ``on_gone(engine)`` (from a daemon thread) once the engine among this process's ancestors has
    disappeared; return that engine, or None (started by hand: nothing to watch)."""
    engine = engine_ancestor()
    if engine is None:
        return None

    def watch() -> None:
        while alive(engine):
            time.sleep(poll_s)
        on_gone(engine)

    threading.Thread(target=watch, name="cpsl-engine-watchdog", daemon=True).start()
    return engine


def stop_when_engine_dies(what: str, poll_s: float = 1.0) -> Process | None:
    """:func:`watch_engine` for a process that saves its state on SIGTERM (cpsl train): SIGTERM itself."""
    import signal

    def gone(engine: Process) -> None:
        with contextlib.suppress(OSError):  # the engine's terminal or pipe may be gone too
            print(f"{what}: the workflow engine that started it (PID {engine.pid}: {engine.command}) is gone; "
                  f"stopping (once training has begun, its state is saved: rerun to resume)", file=sys.stderr,
                  flush=True)
        os.kill(os.getpid(), signal.SIGTERM)  # before the training loop's handler is in place: the default, exit

    return watch_engine(gone, poll_s)
