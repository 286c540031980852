"""The base of every error a user can fix (bad params, bad or missing input files, unreachable server).

The CLI prints these as one line naming the file/key/segment and exits 1 (2 for params); an OSError (read-only
folder, full disk) is printed the same way; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno


class PipelineError(Exception):
    """An error in the user's inputs or environment, with a message that says what and where."""


class ParamsError(PipelineError, ValueError):
    """A params.yaml problem; the message names the file and the dotted key (the CLI exits 2)."""


_OS_HINTS = {
    errno.EROFS: "write the outputs elsewhere (--out) or remount the file system read-write",
    errno.EACCES: "fix the folder's permissions or write the outputs elsewhere (--out)",
    errno.EPERM: "fix the folder's permissions or write the outputs elsewhere (--out)",
    errno.ENOSPC: "free some space and rerun (completed outputs are kept)",
    errno.EDQUOT: "free some space and rerun (completed outputs are kept)",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: the file, the system's reason and what to do about it."""
    where = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or str(exc)
    hint = _OS_HINTS.get(exc.errno or -1)
    text = f"{where}: {reason}" if where else reason
    return f"{text}; {hint}" if hint else text
