"""Taking the raw files from a local mirror folder (``data.mirror``) instead of the network, and the
check every raw file must pass before it is put in the raw folder.

A mirror is a folder holding the dataset's files under the SDK's names. All names are checked before
anything is copied, so a missing file fails at once with the full list. Each file must open as a
computational sequence with at least one readable video; a corrupt or truncated file fails naming it.

Files are copied (``shutil.copyfile``, which uses in-kernel ``sendfile`` on Linux) to a temporary path
and renamed into place. Hard links are available (``link=True``) but not the default: a link shares
the inode with the user's mirror, so DVC caching the raw folder (it moves outputs and makes them
read-only) or any in-place edit would silently change the mirror too.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from cpsl.csd import CSDError, open_csd
from cpsl.csd_safety import NotSelfContainedError, check_file
from cpsl.data.sources import ROLES, DatasetSpec, RawDataError
from cpsl.io_utils import atomic_path


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
        check_file(path, shown_as=label)  # self-contained and bounded (cpsl.csd_safety), before any data is read
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


def _copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)


def fetch_from_mirror(spec: DatasetSpec, mirror_dir: str | Path, out_dir: str | Path, link: bool = False) -> dict:
    """Copy (or hard-link) the dataset's four files from ``mirror_dir`` into ``out_dir``; return role -> path."""
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
    for role in ROLES:  # check all before writing anything, so a bad mirror changes nothing
        check_csd_file(mirror_dir / spec.file(role).name, shown_as=f"mirror file {mirror_dir / spec.file(role).name}")
    out_dir = Path(out_dir)
    paths = {}
    for role in ROLES:
        src, dest = mirror_dir / spec.file(role).name, out_dir / spec.file(role).name
        with atomic_path(dest, suffix=".part") as tmp:
            try:
                if not link:
                    raise OSError("copy requested")
                os.link(src, tmp)
            except OSError:
                _copy(src, tmp)
        paths[role] = dest
    return paths
