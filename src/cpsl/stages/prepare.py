"""Stage ``prepare``: put the four raw computational sequences, ``folds.json`` and ``manifest.json`` in
``data/raw/<dataset>/``.

Sources, chosen from params:

* ``dataset: demo``            -> generated offline by :mod:`cpsl.data.demo` (``data.mirror`` is ignored);
* ``mosi``/``mosei`` + mirror  -> checked, then reflinked, hard-linked or (last resort) copied from ``data.mirror``
                                  (:mod:`cpsl.data.mirror`; the manifest records which: ``placed``);
* ``mosi``/``mosei``           -> downloaded from the URLs in mmsdk's tables (:mod:`cpsl.data.download`).

Completeness protocol (:mod:`cpsl.formats.raw_folder`, the writer and the one reader of the manifest and folds):
``manifest.json`` is removed before anything in the folder changes and written last (atomically), so its presence
means the folder is complete; every file in it is itself renamed into place only when complete. A folder whose
manifest matches the requested dataset and source and that align's reader accepts (regular files, plain names,
valid folds, matching sha256) is left alone. For the demo, the files are regenerated in a scratch folder
(< 1 s) and compared by hash, so a change of ``demo.seed`` is noticed even though the manifest does
not record it. A download re-run keeps files a previous, interrupted run already completed (they
passed the same check before their rename), so only the missing ones are fetched again.

Hashes: a file is read again only when its stat record changed (:mod:`cpsl.formats.file_hashes`); with a hard-linked
mirror the raw file and the mirror file are one inode, so one read verifies both.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Mapping

from cpsl.config import paths as cpsl_paths
from cpsl.data.demo import write_demo
from cpsl.data.download import download_file
from cpsl.data.mirror import COPY, check_csd_file, fetch_from_mirror
from cpsl.data.sources import ROLES, DatasetSpec, RawDataError, dataset_spec, standard_folds
from cpsl.formats import raw_folder
from cpsl.formats.csd import open_csd
from cpsl.formats.file_hashes import HashRecords, records_path
from cpsl.formats.raw_folder import RawFolderError


def source_for(params: Mapping) -> str:
    if params["dataset"] == "demo":
        return "demo"
    return "mirror" if params["data"]["mirror"] else "download"


def _file_entries(files: dict, spec: DatasetSpec, records: HashRecords, placed: dict | None = None) -> dict:
    """role -> manifest entry of ``files[role]`` (hashed in parallel); ``placed``: role -> how a mirror file
    was put there."""
    digests = dict(zip(ROLES, records.sha256_many(files[role] for role in ROLES)))
    entries = {role: {"name": files[role].name, "sha256": digests[role], "size": files[role].stat().st_size,
                      "url": spec.file(role).url} for role in ROLES}
    for role, how in (placed or {}).items():
        entries[role]["placed"] = how
    return entries


def _verified_manifest(out_dir: Path, dataset: str, source: str, spec: DatasetSpec,
                       records: HashRecords) -> dict | None:
    """The folder's manifest when the folder is complete: for this dataset and source, under the spec's file
    names, and accepted by the reader align uses (:mod:`cpsl.formats.raw_folder`: regular files of the recorded
    sizes, valid folds, matching sha256); None otherwise."""
    try:
        manifest = raw_folder.read_manifest(out_dir)
        if manifest.get("dataset") != dataset or manifest.get("source") != source or any(
                manifest["files"][role]["name"] != spec.file(role).name for role in ROLES):
            return None  # checked before the hashes: cheap
        raw_folder.read_folds(raw_folder.folds_path(out_dir, manifest))
        digests = dict(zip(ROLES, records.sha256_many(raw_folder.file_paths(out_dir, manifest))))
        raw_folder.check_digests(out_dir, manifest, digests.__getitem__)
    except (RawFolderError, OSError):
        return None
    return manifest


def _same_digests(manifest: dict, paths: list[Path], records: HashRecords) -> bool:
    return records.sha256_many(paths) == [manifest["files"][role]["sha256"] for role in ROLES]


def _mirror_unchanged(manifest: dict, mirror: Path, spec: DatasetSpec, records: HashRecords) -> bool:
    # Sizes first (cheap), then sha256: a same-size edit of a mirror file (e.g. corrected labels) must be
    # noticed; a file whose stat record has not changed is not read again (a hard-linked one was just verified
    # as the raw file).
    paths = [mirror / spec.file(role).name for role in ROLES]
    if not all(p.is_file() and p.stat().st_size == manifest["files"][r]["size"] for p, r in zip(paths, ROLES)):
        return False
    return _same_digests(manifest, paths, records)


def _remove_stale_temporaries(out_dir: Path, spec: DatasetSpec) -> None:
    """Drop temporaries a killed run (SIGKILL skips clean-up) left behind, so they never reach DVC's cache."""
    if not out_dir.is_dir():
        return
    for name in spec.file_names() + [raw_folder.FOLDS_NAME, raw_folder.MANIFEST_NAME]:
        for tmp in out_dir.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
    for scratch in out_dir.glob(".demo-build-*"):
        shutil.rmtree(scratch, ignore_errors=True)


def _write_folds_and_manifest(out_dir: Path, dataset: str, source: str, files: dict, folds: dict,
                              spec: DatasetSpec, records: HashRecords, placed: dict | None = None) -> dict:
    return raw_folder.write_folds_and_manifest(out_dir, dataset, source, _file_entries(files, spec, records, placed),
                                               folds)


def _prepare_demo(params: Mapping, out_dir: Path, spec: DatasetSpec, records: HashRecords) -> tuple[dict, bool]:

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".demo-build-", dir=out_dir) as scratch:
        files, folds = write_demo(scratch, params["demo"])
        for role in ROLES:  # the same check as a downloaded or mirrored file (cpsl.formats.csd_safety)
            check_csd_file(files[role])
        fresh = _file_entries(files, spec, records)
        existing = _verified_manifest(out_dir, "demo", "demo", spec, records)
        if existing is not None and all(
            existing["files"][r]["sha256"] == fresh[r]["sha256"] for r in ROLES
        ) and json.loads(raw_folder.folds_path(out_dir, existing).read_text()) == folds:
            return existing, False
        raw_folder.invalidate(out_dir)
        placed = {}
        for role in ROLES:
            placed[role] = out_dir / files[role].name
            os.replace(files[role], placed[role])  # same file system: an atomic rename
    return _write_folds_and_manifest(out_dir, "demo", "demo", placed, folds, spec, records), True


def _prepare_download(params: Mapping, out_dir: Path, spec: DatasetSpec) -> dict:
    cfg = params["execution"]["download"]  # how to download (no param: a retry count changes no byte)
    files = {}
    for role in ROLES:
        f = spec.file(role)
        dest = out_dir / f.name
        if dest.is_file():
            try:
                check_csd_file(dest)
                print(f"  {f.name}: already downloaded, kept")
                files[role] = dest
                continue
            except RawDataError:
                dest.unlink()  # not ours or damaged: fetch it again
        print(f"  {f.name}: downloading {f.url}")
        download_file(
            f.url, dest, retries=cfg["retries"], backoff_s=cfg["backoff_s"], timeout_s=cfg["timeout_s"],
            all_file_names=spec.file_names(),
            verify=lambda tmp, name=f.name, url=f.url: check_csd_file(tmp, shown_as=f"{name} (downloaded from {url})"),
        )
        files[role] = dest
    return files


def _summary(out_dir: Path, manifest: dict, folds: dict, changed: bool) -> None:
    state = "prepared" if changed else "already complete and verified; nothing to do"
    print(f"prepare: {manifest['dataset']} ({manifest['source']}) in {out_dir}: {state}")
    for role in ROLES:
        entry = manifest["files"][role]
        # Dimensions and video counts are read from the files, never assumed.
        with open_csd(out_dir / entry["name"]) as seq:
            n_videos, dim = len(seq.video_ids()), seq.feature_dim()
        print(f"  {role:<8} {entry['name']:<34} {entry['size'] / 1e6:9.1f} MB  {n_videos:5d} videos  dim {dim}")
    print("  folds: " + ", ".join(f"{k} {len(folds.get(k, []))} videos" for k in ("train", "valid", "test")))


def _report_placement(placed: dict, mirror: Path, seconds: float) -> None:
    hows = [how for _, how in placed.values()]
    counts = ", ".join(f"{how} x{hows.count(how)}" for how in dict.fromkeys(hows))
    print(f"prepare: placed {len(hows)} files from {mirror} in {seconds:.2f} s: {counts}")
    if COPY in hows:
        copied = sum(path.stat().st_size for path, how in placed.values() if how == COPY)
        print(f"  {copied / 1e9:.1f} GB copied (the mirror is on another file system, or this one refuses links): "
              f"a mirror on the project's file system is linked instead, at no extra space")


def _report_hashing(records: HashRecords) -> None:
    if records.read:
        size = sum(p.stat().st_size for p in records.read if p.is_file())
        print(f"prepare: sha256 of {len(records.read)} files ({size / 1e9:.2f} GB) read in {records.read_s:.1f} s")
    else:
        print("prepare: sha256: no file read again (each one's size, inode and times match its record)")


def run_prepare(params: Mapping, out_dir: str | Path | None = None) -> dict:
    """Prepare the raw folder for ``params['dataset']``; return its manifest."""
    dataset = params["dataset"]
    out_dir = Path(out_dir) if out_dir is not None else cpsl_paths.raw_dir(dataset)
    spec = dataset_spec(dataset)
    source = source_for(params)
    _remove_stale_temporaries(out_dir, spec)
    records = HashRecords(records_path(out_dir))

    if source == "demo":
        if params["data"]["mirror"]:
            print("prepare: dataset 'demo' is generated offline; data.mirror is ignored")
        manifest, changed = _prepare_demo(params, out_dir, spec, records)
    else:
        mirror = Path(params["data"]["mirror"]).expanduser() if source == "mirror" else None
        existing = _verified_manifest(out_dir, dataset, source, spec, records)
        if existing is not None and (mirror is None or _mirror_unchanged(existing, mirror, spec, records)):
            manifest, changed = existing, False
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            raw_folder.invalidate(out_dir)
            placed = None
            if source == "mirror":
                start = time.perf_counter()
                placed = fetch_from_mirror(spec, mirror, out_dir)
                _report_placement(placed, mirror, time.perf_counter() - start)
                files = {role: path for role, (path, _) in placed.items()}
            else:
                files = _prepare_download(params, out_dir, spec)
            manifest = _write_folds_and_manifest(out_dir, dataset, source, files, standard_folds(dataset), spec,
                                                 records, {role: how for role, (_, how) in (placed or {}).items()})
            changed = True
    records.save()
    if source != "demo":
        _report_hashing(records)
    folds = json.loads(raw_folder.folds_path(out_dir, manifest).read_text())
    _summary(out_dir, manifest, folds, changed)
    return manifest
