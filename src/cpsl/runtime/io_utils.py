"""Small I/O helpers shared by all stages: atomic writes, hashing, and text cells safe for spreadsheets.

Outputs are written next to their final path and renamed into place only when complete, so an
interrupted stage never leaves a half-written file where the next stage (or DVC) would trust it.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from cpsl.errors import PipelineError, describe_os_error, write_fault


@contextlib.contextmanager
def atomic_path(final: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the same folder as ``final``; rename it to ``final`` on success,
    delete it on any error. Works for files and folders (the caller creates what it needs). A write that ran out
    of room (file-size limit, full disk, quota; whatever library wrapped the errno) becomes one error naming
    ``final`` and the cause (cpsl.errors.write_fault)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix + ".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.unlink()  # let the caller create a file or a folder there
    try:
        yield tmp_path
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp_path, final)
    except BaseException as exc:
        if tmp_path.is_dir():
            shutil.rmtree(tmp_path, ignore_errors=True)
        else:
            tmp_path.unlink(missing_ok=True)
        fault = write_fault(final, exc) if isinstance(exc, Exception) else None
        if fault is not None:
            raise fault from exc
        raise


@contextlib.contextmanager
def hdf5_atomic(final: str | Path, suffix: str = ".h5") -> Iterator["h5py.File"]:  # noqa: F821 - h5py is lazy
    """Yield an HDF5 file to fill; once the block is done it is written to ``final`` atomically (:func:`atomic_path`).

    HDF5 builds the file in memory and Python writes it out: a write stopped by the file-size limit or a full
    disk is then a plain OSError with its errno (named in one line by atomic_path), while HDF5 itself, when its own
    write fails, leaves objects it cannot close and can crash the interpreter (seen: SIGSEGV under `ulimit -f`).
    The cost: the file's size in memory once more, next to the arrays it is made from."""
    import h5py

    final = Path(final)
    with h5py.File(f"{final.name}.in-memory", "w", driver="core", backing_store=False) as h5:
        yield h5
        h5.flush()
        image = h5.id.get_file_image()
    with atomic_path(final, suffix=suffix) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(image)


def write_text_atomic(final: str | Path, text: str) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text)


def write_json_atomic(final: str | Path, obj) -> None:
    write_text_atomic(final, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def open_lock_file(path: str | Path, mode: int = 0o644) -> int:
    """Open (creating it if needed) the lock file ``path`` for reading and writing, never through a link: lock files
    are truncated and rewritten with the holder's name, so a symbolic or hard link planted at ``path`` would
    empty and overwrite a file outside the project. No ``O_TRUNC``: a waiting opener must not wipe the holder's
    text. A link, or anything but a regular file, is refused in one line (PipelineError)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PipelineError(f"{path}: is a symbolic link (to {os.readlink(path)}), not the lock file cpsl "
                                f"makes; cpsl never writes through a link: remove it and rerun") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        what = "a hard link to another file" if stat.S_ISREG(info.st_mode) else "not a regular file"
        raise PipelineError(f"{path}: is {what}, not the lock file cpsl makes; cpsl never writes through a link: "
                            f"remove it and rerun")
    return fd


def refuse_symlink(path: str | Path, what: str) -> None:
    """Refuse ``path`` (one line, PipelineError) when it is a symbolic link: a folder cpsl writes or reads as its
    own (a run folder, a lock folder) that was replaced by a link would send every write outside the project."""
    path = Path(path)
    if path.is_symlink():
        raise PipelineError(f"{path}: {what} is a symbolic link (to {os.readlink(path)}); cpsl does not write or read "
                            f"through a link it did not make: replace the link with a folder (or remove it) and rerun")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_stale_temporaries(folder: str | Path, names) -> list[Path]:
    """Delete the temporaries :func:`atomic_path` left for ``names`` (paths relative to ``folder``) when a
    process was SIGKILLed (no clean-up runs then): ``.<name>.<random>[suffix].tmp`` files or folders next to
    each name. Only these patterns, so nothing else in the folder is touched. Returns what was removed."""
    removed = []
    for name in names:
        final = Path(folder) / name
        if not final.parent.is_dir():
            continue
        for tmp in final.parent.glob(f".{final.name}.*.tmp"):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def check_free_space(folder: str | Path, need_bytes: int, what: str) -> None:
    """Fail early, in one line, when ``folder`` cannot be written (read-only, no permission) or lacks
    ``need_bytes`` of free space for ``what``; the folder is created if needed."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".cpsl-write-probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PipelineError(f"{folder}: cannot write here: {describe_os_error(exc)}") from exc
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise PipelineError(f"{folder}: {free / 1e6:.0f} MB free, about {need_bytes / 1e6:.0f} MB needed for {what}; "
                            f"free some space (or write elsewhere with --out) and rerun")


# A spreadsheet opening a CSV evaluates a cell starting with one of these as a formula (OWASP "CSV injection"):
# a segment id like `=HYPERLINK(...)` or `-2+3+cmd|x` must stay text. The apostrophe itself is included so that
# spreadsheet_text/plain_text are exact inverses.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def spreadsheet_text(text: str) -> str:
    """A text cell for a CSV file: prefixed with ``'`` (shown as text) when it starts like a formula; numbers
    such as ``-0.5`` are left alone. :func:`plain_text` undoes it."""
    text = str(text)
    if not text.startswith(FORMULA_START):
        return text
    try:
        float(text)
        return text
    except ValueError:
        return "'" + text


def plain_text(cell: str) -> str:
    """The text a :func:`spreadsheet_text` cell stands for."""
    return cell[1:] if cell.startswith("'") else cell
