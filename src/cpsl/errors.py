"""The base of every error a user can fix (bad params, bad or missing input files, unreachable server).

The CLI prints these as one line naming the file/key/segment and exits 1 (2 for params); an OSError (read-only
folder, full disk) is printed the same way; anything else is a bug and keeps its traceback.

A write that fails for want of room (:func:`write_fault`) names its real cause: the process's file-size limit
(``ulimit -f``, errno EFBIG; CPython ignores SIGXFSZ, so the write fails instead of killing the stage), a full disk
(ENOSPC, with the space left) or a quota (EDQUOT). Libraries hide the errno: h5py raises a RuntimeError whose
context, or whose HDF5 message (``errno = 27``), carries it; torch raises a RuntimeError in the context of the
OSError of the file object it writes to. (The stages' own HDF5 files are built in memory and written by Python,
cpsl.runtime.io_utils.hdf5_atomic, and their checkpoints through a Python file object, cpsl.formats.run_folder.save_pt.)
"""
from __future__ import annotations

import errno
import re
import resource
import shutil
from pathlib import Path


class PipelineError(Exception):
    """An error in the user's inputs or environment, with a message that says what and where."""


class ParamsError(PipelineError, ValueError):
    """A params.yaml problem; the message names the file and the dotted key (the CLI exits 2)."""


# {elsewhere}: how the stage at hand writes its outputs to another folder (the CLI names only its own flags)
_OS_HINTS = {
    errno.EROFS: "{elsewhere} or remount the file system read-write",
    errno.EACCES: "fix the folder's permissions or {elsewhere}",
    errno.EPERM: "fix the folder's permissions or {elsewhere}",
    errno.ENOSPC: "free some space and rerun (completed outputs are kept)",
    errno.EDQUOT: "free some space and rerun (completed outputs are kept)",
}
WRITE_ELSEWHERE = "write the outputs elsewhere"


def describe_os_error(exc: OSError, elsewhere: str = WRITE_ELSEWHERE) -> str:
    """One line for an OSError: the file, the system's reason and what to do about it (``elsewhere``: how to
    write the outputs to another folder, e.g. "write the outputs elsewhere (--out)")."""
    where = exc.filename if exc.filename is not None else ""
    if exc.errno == errno.EFBIG:  # the file-size limit, with its value, not "File too large" alone
        reason = describe_write_fault(where or ".", exc.errno)
        return f"{where}: {reason}" if where else reason
    reason = exc.strerror or str(exc)
    hint = _OS_HINTS.get(exc.errno or -1)
    text = f"{where}: {reason}" if where else reason
    return f"{text}; {hint.format(elsewhere=elsewhere)}" if hint else text


# ----------------------------------------------------------------------------------------------- failed writes
WRITE_FAULTS = (errno.EFBIG, errno.ENOSPC, errno.EDQUOT)
_HDF5_ERRNO = re.compile(r"\berrno = (\d+)")  # how HDF5 reports the system error inside its own message


def fault_errno(exc: BaseException) -> int | None:
    """The errno of a failed write behind ``exc``: a write fault's (EFBIG, ENOSPC, EDQUOT) anywhere in the chain
    of causes and contexts first, else the first errno found, else None."""
    found, seen, todo = [], set(), [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            found.append(e.errno)
        found.extend(int(n) for n in _HDF5_ERRNO.findall(str(e)))
        todo += [e.__cause__, e.__context__]
    return next((n for n in found if n in WRITE_FAULTS), found[0] if found else None)


def _size(n_bytes: float) -> str:
    if n_bytes < 1e6:
        return f"{n_bytes / 1e3:.0f} kB"
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes < 1e8 else f"{n_bytes / 1e6:.0f} MB"


def describe_write_fault(path: str | Path, err_no: int) -> str:
    """Why a write into ``path`` ran out of room and what to do, for errno EFBIG, ENOSPC or EDQUOT."""
    if err_no == errno.EFBIG:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY:
            return (f"file too large for this process's file-size limit (`ulimit -f`: {_size(limit)}), not a full "
                    f"disk; raise the limit (`ulimit -f unlimited`) and rerun")
        return "file too large for this file system's maximum file size; write it to another file system"
    if err_no == errno.EDQUOT:
        return "disk quota exceeded; free some space within your quota (or ask for a larger one) and rerun"
    folder = Path(path).absolute()
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return (f"no space left on device ({_size(shutil.disk_usage(folder).free)} free there now); free some space and "
            f"rerun (completed outputs are kept)")


def write_fault(path: str | Path, exc: BaseException) -> PipelineError | None:
    """A one-line error naming ``path`` and the real cause when ``exc`` is a write that ran out of room (file-size
    limit, full disk, quota), else None (the caller re-raises ``exc``)."""
    err_no = fault_errno(exc)
    if err_no not in WRITE_FAULTS:
        return None
    return PipelineError(f"{path}: could not be written: {describe_write_fault(path, err_no)}")
