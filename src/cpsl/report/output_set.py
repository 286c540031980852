"""The report's outputs as ONE set: after any interruption, even SIGKILL, reports/<dataset>/ holds the previous
report or the new one, never a mix (new tables beside old figures).

Every output is written into a staging folder beside the reports folder (``.<name>.report-new.<random>.tmp``);
when all are written, one ``renameat2(RENAME_EXCHANGE)`` swaps the two folders atomically, and the old set, now
in the staging folder's place, is deleted. Where the file system cannot exchange (not Linux, some network file
systems), the old folder is first renamed to ``.<name>.report-old.<random>.tmp`` and the new one into place: a
kill between these two renames leaves no reports folder, and :func:`recover` (called before each report) renames
the old one back. Files in the reports folder that the report does not write (a DVC ``.gitignore``, a note) are
linked into the new set, so the swap keeps them; a sub-folder the report does not write is refused rather than
moved (``--out`` pointing at a folder that holds other work).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from cpsl.errors import PipelineError

_NEW, _OLD = "report-new", "report-old"
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _staging(final: Path, kind: str) -> list[Path]:
    return sorted(final.parent.glob(f".{final.name}.{kind}.*.tmp"))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover(final: str | Path) -> None:
    """Clean up after a report killed midway: put a set the fallback swap had moved aside back in place, delete
    staging folders (an unfinished new set, or an old set already replaced)."""
    final = Path(final)
    if not final.parent.is_dir():
        return
    old = _staging(final, _OLD)
    if old and not final.exists():
        os.rename(old.pop(), final)
    for path in old + _staging(final, _NEW):
        _remove(path)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system or file system cannot."""
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _carry_foreign(final: Path, staged: Path, own: set[str]) -> None:
    """Link (else copy) the files of ``final`` that the report does not write into the new set."""
    for entry in final.iterdir():
        if entry.name in own or entry.name in {p.name for p in staged.iterdir()}:
            continue
        if entry.is_dir() and not entry.is_symlink():
            raise PipelineError(f"{final}: holds the folder '{entry.name}', which the report does not write; the "
                                f"report replaces {final} as a whole, so move '{entry.name}' elsewhere or write the "
                                f"report to another folder (--out)")
        if entry.is_symlink():
            os.symlink(os.readlink(entry), staged / entry.name)
            continue
        try:
            os.link(entry, staged / entry.name)
        except OSError:
            shutil.copy2(entry, staged / entry.name)


def swap_in(staged: Path, final: Path, own: Iterable[str]) -> None:
    """Make the complete set in ``staged`` the contents of ``final`` in one step (see the module docstring)."""
    if not final.exists():
        os.rename(staged, final)
        return
    _carry_foreign(final, staged, set(own))
    if _exchange(staged, final):
        discard_old(staged)  # the old set is now where the staging folder was
        return
    fd, old = tempfile.mkstemp(prefix=f".{final.name}.{_OLD}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    os.unlink(old)
    os.rename(final, old)
    os.rename(staged, final)
    discard_old(Path(old))


def discard_old(path: Path) -> None:
    """Delete the replaced set (its own function: the kill-after-swap test stops here)."""
    _remove(path)


def _set_mode(staged: Path, final: Path) -> None:
    """mkdtemp makes a 0700 folder: give the new set the old folder's mode, else a plain mkdir's."""
    if final.is_dir():
        shutil.copymode(final, staged)
        return
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staged, 0o777 & ~umask)


@contextlib.contextmanager
def staged_set(final: str | Path, own: Iterable[str]) -> Iterator[Path]:
    """Yield an empty staging folder beside ``final``; on success its contents replace ``final``'s as one set
    (``own``: the names the report writes), on any error it is deleted and ``final`` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover(final)
    staged = Path(tempfile.mkdtemp(prefix=f".{final.name}.{_NEW}.", suffix=".tmp", dir=final.parent))
    _set_mode(staged, final)
    try:
        yield staged
        swap_in(staged, final, own)
    except PipelineError as exc:
        _remove(staged)
        # name the file the user knows (reports/<dataset>/table2.md), not its place in the staging folder
        raise type(exc)(str(exc).replace(str(staged), str(final))) from exc
    except OSError as exc:
        _remove(staged)
        if exc.filename and str(exc.filename).startswith(str(staged)):
            exc.filename = str(final) + str(exc.filename)[len(str(staged)):]
        raise
    except BaseException:
        _remove(staged)
        raise
