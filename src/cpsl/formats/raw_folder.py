"""The raw folder ``data/raw/<dataset>/``: its file names, and the one writer and the one reader of its
``manifest.json`` and ``folds.json`` (docs/DESIGN.md, "Raw folder").

Completeness protocol (the writer): ``manifest.json`` is removed before anything in the folder changes
(:func:`invalidate`) and written last, atomically (:func:`write_folds_and_manifest`), so its presence means the
folder is complete. The reader (:func:`read_manifest`, :func:`read_folds`, :func:`check_digests`) is what align
accepts, and prepare calls it too: a folder align would refuse is never "already complete" for prepare, so
rerunning prepare, as align's messages say, repairs it.
"""
from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path
from typing import Mapping

from cpsl.config.paths import RAW_MANIFEST_NAME
from cpsl.errors import PipelineError
from cpsl.runtime.io_utils import write_json_atomic

MANIFEST_NAME = RAW_MANIFEST_NAME  # named in config/paths.py: the engines declare it as prepare's output
FOLDS_NAME = "folds.json"
ROLES = ("words", "acoustic", "visual", "labels")  # the manifest's "files" keys, in this order everywhere
SPLITS = ("train", "valid", "test")  # folds.json's keys (the cache's groups: cpsl.formats.cache.SPLITS)
MAX_ID_LENGTH = 128  # YouTube ids (MOSI, MOSEI) have 11 characters, MOSEI's numeric ones fewer


class RawFolderError(PipelineError, ValueError):
    """A raw folder that is incomplete or not as prepare wrote it; the message names the file and the key."""


# ---------------------------------------------------------------- writer (prepare)

def invalidate(raw_dir: Path) -> None:
    """Mark the folder incomplete: first, before any file in it changes."""
    (raw_dir / MANIFEST_NAME).unlink(missing_ok=True)


def write_folds_and_manifest(raw_dir: Path, dataset: str, source: str, entries: Mapping[str, dict],
                             folds: Mapping) -> dict:
    """Write folds.json, then the manifest (``entries``: role -> {name, sha256, size, url[, placed]}); return it."""
    write_json_atomic(raw_dir / FOLDS_NAME, folds)
    manifest = {"dataset": dataset, "source": source, "files": {role: dict(entries[role]) for role in ROLES},
                "folds": FOLDS_NAME}
    write_json_atomic(raw_dir / MANIFEST_NAME, manifest)  # last: its presence marks the folder complete
    return manifest


# ---------------------------------------------------------------- reader (align, and prepare's "complete?" check)

def _load_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise RawFolderError(f"{path}: {what} not found (run `cpsl prepare` first)")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RawFolderError(f"{path}: {what} is not valid JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise RawFolderError(f"{path}: {what} must be a JSON object")
    return obj


def _plain_file_name(value, path: Path, key: str) -> str:
    """``value`` as a file name inside the raw folder: a manifest naming `../elsewhere/L.csd` or `/etc/x` would
    make align read (and cache) a file prepare never checked."""
    if (not isinstance(value, str) or value in ("", ".", "..") or "/" in value or "\\" in value
            or "\x00" in value):
        raise RawFolderError(f"{path}: key '{key}' must be a plain file name in {path.parent} (no folder, no '..', "
                             f"not absolute), got {value!r}; rerun `cpsl prepare` to write the manifest again")
    return value


def read_manifest(raw_dir: Path) -> dict:
    """The manifest, with every listed file present, a regular file and of the recorded size, and plain file names
    (hashes: :func:`check_digests`). Raises RawFolderError naming the file and key."""
    path = raw_dir / MANIFEST_NAME
    manifest = _load_json(path, "manifest")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise RawFolderError(f"{path}: key 'files' missing or not an object")
    for role in ROLES:
        entry = files.get(role)
        if not isinstance(entry, dict) or not all(k in entry for k in ("name", "sha256", "size")):
            raise RawFolderError(f"{path}: key 'files.{role}' missing or lacks name/sha256/size")
        file = raw_dir / _plain_file_name(entry["name"], path, f"files.{role}.name")
        if file.is_symlink():  # prepare places reflinks, hard links or copies: never a symbolic link
            raise RawFolderError(f"{file}: file listed in {path} as '{role}' is a symbolic link (to "
                                 f"{os.readlink(file)}), not a file `cpsl prepare` placed; rerun `cpsl prepare`")
        if not file.is_file():
            raise RawFolderError(f"{file}: file listed in {path} as '{role}' is missing (rerun `cpsl prepare`)")
        size = file.stat().st_size
        if size != entry["size"]:
            raise RawFolderError(f"{file}: file changed since `cpsl prepare` (manifest {path} records size "
                                 f"{entry['size']}, found {size}); rerun `cpsl prepare`")
    _plain_file_name(manifest.get("folds", FOLDS_NAME), path, "folds")
    return manifest


def file_paths(raw_dir: Path, manifest: Mapping) -> list[Path]:
    """The listed files, in :data:`ROLES` order (of a manifest :func:`read_manifest` accepted)."""
    return [raw_dir / manifest["files"][role]["name"] for role in ROLES]


def folds_path(raw_dir: Path, manifest: Mapping) -> Path:
    return raw_dir / manifest.get("folds", FOLDS_NAME)


def check_digests(raw_dir: Path, manifest: Mapping, digest_of) -> None:
    """Compare each file's sha256 with the manifest's, in :data:`ROLES` order; ``digest_of(role)`` gives the
    digest found (align: a background hash's result, so the first mismatch is reported as soon as it is known)."""
    for role in ROLES:
        entry = manifest["files"][role]
        found = digest_of(role)
        if found != entry["sha256"]:
            raise RawFolderError(f"{raw_dir / entry['name']}: file changed since `cpsl prepare` (manifest "
                                 f"{raw_dir / MANIFEST_NAME} records sha256 {entry['sha256'][:12]}..., found "
                                 f"{found[:12]}...); rerun `cpsl prepare`")


def id_problem(vid: str) -> str | None:
    """Why ``vid`` cannot be a video id (it becomes an HDF5 name, a segment id, a CSV cell), or None."""
    if not vid:
        return "is empty"
    if len(vid) > MAX_ID_LENGTH:
        return f"is {len(vid)} characters long (at most {MAX_ID_LENGTH})"
    if "/" in vid:
        return "contains '/' (HDF5 reads it as a path of nested groups)"
    if vid in (".", ".."):
        return "is a path component, not a name"
    odd = next((c for c in vid if unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp")), None)
    if odd is not None:
        return f"contains the control character U+{ord(odd):04X}"
    if vid != vid.strip():
        return "starts or ends with white space"
    return None


def video_id_message(vid: str, where) -> str | None:
    """The one line refusing a video id of ``where`` (a file) that :func:`id_problem` objects to, or None."""
    problem = id_problem(vid)
    if not problem:
        return None
    shown = repr(vid[:40] + ("..." if len(vid) > 40 else ""))
    return (f"{where}: video id {shown} {problem}; a video id is 1-{MAX_ID_LENGTH} printable characters without "
            f"'/' (fix or re-download the file)")


def read_folds(path: Path) -> dict[str, str]:
    """video id -> split, checking that no video sits in two splits and that every id is a valid one."""
    folds = _load_json(path, "folds file")
    where: dict[str, str] = {}
    for split in SPLITS:
        ids = folds.get(split)
        if not isinstance(ids, list) or not all(isinstance(v, str) for v in ids):
            raise RawFolderError(f"{path}: key '{split}' must be a list of video ids")
        for vid in ids:
            message = video_id_message(vid, f"{path} (split '{split}')")
            if message:
                raise RawFolderError(message)
            if vid in where and where[vid] != split:
                raise RawFolderError(f"{path}: video '{vid}' is in both '{where[vid]}' and '{split}'")
            where[vid] = split
    return where
