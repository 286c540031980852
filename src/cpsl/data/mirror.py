"""Taking the raw files from a local mirror folder (``data.mirror``) instead of the network, and the
check every raw file must pass before it is put in the raw folder.

A mirror is a folder holding the dataset's files under the SDK's names. All names are checked before
anything is placed, so a missing file fails at once with the full list. Each file must open as a
computational sequence with at least one readable video; a corrupt or truncated file fails naming it.

One copy of the data (issue 17: MOSEI's .csd files are 16 GB): each file is placed in the raw folder by
:func:`place_file`, without copying its bytes where the file system allows it: a reflink (a copy-on-write clone,
FICLONE: btrfs, XFS, bcachefs, ...; a separate inode, so nothing done to one name can reach the other), else a
hard link (same file system: the same inode under a second name), else a copy. Each is made at a temporary path
and renamed into place. A hard link makes the raw file and the mirror file one file, so nothing may write to a
raw file in place: every stage writes new files and renames them (which replaces a name, never the linked
inode), opens raw files read-only, and never changes their mode or times; DVC does not cache the raw folder
(``cache: false`` in dvc.yaml: it would move the file into its cache and make it read-only, i.e. chmod the
mirror's inode). tests/test_mirror_links.py checks the mirror's bytes, mode and times after prepare, a rerun
and ``dvc repro --force``.
"""
from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from cpsl.data.sources import ROLES, DatasetSpec, RawDataError
from cpsl.formats.csd import CSDError, open_csd
from cpsl.formats.csd_safety import NotSelfContainedError, check_file
from cpsl.runtime.io_utils import atomic_path


def check_csd_file(path: str | Path, shown_as: str | None = None) -> None:
    """Raise :class:`RawDataError` unless ``path`` is a non-empty, readable computational sequence.

    Reads the first and last video in full (cheap) so that truncated files, whose tail is usually
    what is missing, fail here rather than in a later stage. ``shown_as`` is the name used in errors
    (e.g. the final name of a temporary download).
    """
    path = Path(path)
    label = shown_as or str(path)
    if not path.is_file():
        raise RawDataError(f"{label}: file not found")
    if path.stat().st_size == 0:
        raise RawDataError(f"{label}: file is empty")
    try:
        # self-contained and bounded (cpsl.formats.csd_safety), before any data is read
        check_file(path, shown_as=label)
        with open_csd(path) as seq:
            ids = seq.video_ids()
            if not ids:
                raise RawDataError(f"{label}: computational sequence '{seq.root_name}' holds no videos")
            for vid in {ids[0], ids[-1]}:
                seq.read(vid)
    except CSDError as exc:
        raise RawDataError(f"{label}: corrupt or truncated computational sequence ({exc})") from exc
    except (RawDataError, NotSelfContainedError):
        raise
    except Exception as exc:  # noqa: BLE001 - h5py raises assorted errors on damaged files
        raise RawDataError(f"{label}: corrupt or truncated computational sequence ({exc})") from exc


# linux/fs.h: _IOW(0x94, 9, int): make the destination share the source's extents (copy on write)
FICLONE = 0x40049409

# what place_file did, as printed and recorded in the manifest ("placed")
REFLINK, HARD_LINK, COPY = "reflink", "hard link", "copy"


def _reflink(src: Path, dest: Path) -> None:
    with open(src, "rb") as s, open(dest, "xb") as d:
        fcntl.ioctl(d.fileno(), FICLONE, s.fileno())


def _hard_link(src: Path, dest: Path) -> None:
    # explicit: CPython's default calls link(2), which on Linux links a symbolic link itself, not its target
    os.link(src, dest, follow_symlinks=True)


def _copy(src: Path, dest: Path) -> None:
    shutil.copyfile(src, dest)  # in-kernel sendfile on Linux


def place_file(src: Path, dest: Path) -> str:
    """Give ``dest`` (a new path) the bytes of ``src`` without a second copy where possible: a reflink, else a
    hard link, else a copy (another file system, or one that refuses both). Returns which (REFLINK, HARD_LINK,
    COPY). The reflink is tried first: it costs no space either, and the two names stay independent files."""
    try:
        _reflink(src, dest)
        return REFLINK
    except OSError:  # EOPNOTSUPP/EINVAL (ext4, tmpfs, ...), EXDEV (another file system)
        dest.unlink(missing_ok=True)
    try:
        _hard_link(src, dest)
        return HARD_LINK
    except OSError:  # EXDEV, EPERM (fs.protected_hardlinks on a file of another user), EMLINK, ...
        pass
    _copy(src, dest)
    return COPY


def fetch_from_mirror(spec: DatasetSpec, mirror_dir: str | Path, out_dir: str | Path) -> dict:
    """Check the dataset's four files in ``mirror_dir`` and place them in ``out_dir`` (:func:`place_file`);
    return role -> (path, how it was placed)."""
    mirror_dir = Path(mirror_dir).expanduser()
    if not mirror_dir.is_dir():
        raise RawDataError(
            f"data.mirror = {str(mirror_dir)!r} is not a folder; it must hold {', '.join(spec.file_names())}"
        )
    missing = [spec.file(r).name for r in ROLES if not (mirror_dir / spec.file(r).name).is_file()]
    if missing:
        raise RawDataError(
            f"mirror folder {mirror_dir} lacks {len(missing)} of the {spec.dataset} files: {', '.join(missing)} "
            f"(expected all of: {', '.join(spec.file_names())})"
        )
    # A mirror file may be a symbolic link (relative or not): the file it resolves to is the one checked, placed and
    # hashed, never the link itself (a hard link of a relative link would resolve elsewhere in the raw folder).
    sources = {role: Path(os.path.realpath(mirror_dir / spec.file(role).name)) for role in ROLES}
    for role in ROLES:  # check all before writing anything, so a bad mirror changes nothing
        shown = mirror_dir / spec.file(role).name
        shown_as = f"mirror file {shown}" + (f" (a link to {sources[role]})" if shown.is_symlink() else "")
        check_csd_file(sources[role], shown_as=shown_as)
    out_dir = Path(out_dir)
    placed = {}
    for role in ROLES:
        src, dest = sources[role], out_dir / spec.file(role).name
        with atomic_path(dest, suffix=".part") as tmp:
            how = place_file(src, tmp)
        placed[role] = (dest, how)
    return placed
