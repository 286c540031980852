"""Stage ``prepare``: put the four raw computational sequences, ``folds.json`` and ``manifest.json`` in
``data/raw/<dataset>/``.

Sources, chosen from params:

* ``dataset: demo``            -> generated offline by :mod:`cpsl.data.demo` (``data.mirror`` is ignored);
* ``mosi``/``mosei`` + mirror  -> copied from ``data.mirror`` and checked (:mod:`cpsl.data.mirror`);
* ``mosi``/``mosei``           -> downloaded from the URLs in mmsdk's tables (:mod:`cpsl.data.download`).

Completeness protocol: ``manifest.json`` is removed before anything in the folder changes and written
last (atomically), so its presence means the folder is complete; every file in it is itself renamed
into place only when complete. A folder whose manifest matches the requested dataset and source and
whose sha256 hashes verify is left alone. For the demo, the files are regenerated in a scratch folder
(< 1 s) and compared by hash, so a change of ``demo.seed`` is noticed even though the manifest does
not record it. A download re-run keeps files a previous, interrupted run already completed (they
passed the same check before their rename), so only the missing ones are fetched again.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

from cpsl import paths as cpsl_paths
from cpsl.csd import open_csd
from cpsl.data.download import download_file
from cpsl.data.mirror import check_csd_file, fetch_from_mirror
from cpsl.data.sources import ROLES, DatasetSpec, RawDataError, dataset_spec, standard_folds
from cpsl.io_utils import sha256_file, write_json_atomic

MANIFEST_NAME = "manifest.json"
FOLDS_NAME = "folds.json"


def source_for(params: Mapping) -> str:
    if params["dataset"] == "demo":
        return "demo"
    return "mirror" if params["data"]["mirror"] else "download"


def _file_entry(path: Path, url: str | None) -> dict:
    return {"name": path.name, "sha256": sha256_file(path), "size": path.stat().st_size, "url": url}


def read_manifest(out_dir: str | Path) -> dict | None:
    """The folder's manifest, or None when absent or unreadable (i.e. the folder is not complete)."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None
    return manifest


def _manifest_verifies(manifest: dict | None, out_dir: Path, dataset: str, source: str, spec: DatasetSpec) -> bool:
    if manifest is None or manifest.get("dataset") != dataset or manifest.get("source") != source:
        return False
    if not (out_dir / manifest.get("folds", FOLDS_NAME)).is_file():
        return False
    for role in ROLES:
        entry = manifest["files"].get(role)
        if not isinstance(entry, dict) or entry.get("name") != spec.file(role).name:
            return False
        path = out_dir / entry["name"]
        if not path.is_file() or path.stat().st_size != entry.get("size") or sha256_file(path) != entry.get("sha256"):
            return False
    return True


def _mirror_unchanged(manifest: dict, mirror: Path, spec: DatasetSpec) -> bool:
    # Sizes first (cheap), then sha256: a same-size edit of a mirror file (e.g. corrected labels) must be
    # noticed; hashing costs about as much as the copy it may save, and a no-op run is otherwise instant.
    for role in ROLES:
        src = mirror / spec.file(role).name
        if not src.is_file() or src.stat().st_size != manifest["files"][role]["size"]:
            return False
    return all(sha256_file(mirror / spec.file(role).name) == manifest["files"][role]["sha256"] for role in ROLES)


def _remove_stale_temporaries(out_dir: Path, spec: DatasetSpec) -> None:
    """Drop temporaries a killed run (SIGKILL skips clean-up) left behind, so they never reach DVC's cache."""
    if not out_dir.is_dir():
        return
    for name in spec.file_names() + [FOLDS_NAME, MANIFEST_NAME]:
        for tmp in out_dir.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
    for scratch in out_dir.glob(".demo-build-*"):
        shutil.rmtree(scratch, ignore_errors=True)


def _invalidate(out_dir: Path) -> None:
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)


def _write_folds_and_manifest(out_dir: Path, dataset: str, source: str, files: dict, folds: dict,
                              spec: DatasetSpec) -> dict:
    write_json_atomic(out_dir / FOLDS_NAME, folds)
    manifest = {
        "dataset": dataset,
        "source": source,
        "files": {role: _file_entry(files[role], spec.file(role).url) for role in ROLES},
        "folds": FOLDS_NAME,
    }
    write_json_atomic(out_dir / MANIFEST_NAME, manifest)  # last: its presence marks the folder complete
    return manifest


def _prepare_demo(params: Mapping, out_dir: Path, spec: DatasetSpec, existing: dict | None) -> tuple[dict, bool]:
    from cpsl.data.demo import write_demo

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".demo-build-", dir=out_dir) as scratch:
        files, folds = write_demo(scratch, params["demo"])
        for role in ROLES:  # the same check as a downloaded or mirrored file (cpsl.csd_safety)
            check_csd_file(files[role])
        fresh = {role: _file_entry(files[role], None) for role in ROLES}
        if _manifest_verifies(existing, out_dir, "demo", "demo", spec) and all(
            existing["files"][r]["sha256"] == fresh[r]["sha256"] for r in ROLES
        ) and json.loads((out_dir / existing.get("folds", FOLDS_NAME)).read_text()) == folds:
            return existing, False
        _invalidate(out_dir)
        placed = {}
        for role in ROLES:
            placed[role] = out_dir / files[role].name
            os.replace(files[role], placed[role])  # same file system: an atomic rename
    return _write_folds_and_manifest(out_dir, "demo", "demo", placed, folds, spec), True


def _prepare_download(params: Mapping, out_dir: Path, spec: DatasetSpec) -> dict:
    cfg = params["data"]["download"]
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


def run_prepare(params: Mapping, out_dir: str | Path | None = None) -> dict:
    """Prepare the raw folder for ``params['dataset']``; return its manifest."""
    dataset = params["dataset"]
    out_dir = Path(out_dir) if out_dir is not None else cpsl_paths.raw_dir(dataset)
    spec = dataset_spec(dataset)
    source = source_for(params)
    _remove_stale_temporaries(out_dir, spec)
    existing = read_manifest(out_dir)

    if source == "demo":
        if params["data"]["mirror"]:
            print("prepare: dataset 'demo' is generated offline; data.mirror is ignored")
        manifest, changed = _prepare_demo(params, out_dir, spec, existing)
    else:
        mirror = Path(params["data"]["mirror"]).expanduser() if source == "mirror" else None
        if _manifest_verifies(existing, out_dir, dataset, source, spec) and (
            mirror is None or _mirror_unchanged(existing, mirror, spec)
        ):
            manifest, changed = existing, False
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            _invalidate(out_dir)
            if source == "mirror":
                files = fetch_from_mirror(spec, mirror, out_dir)
            else:
                files = _prepare_download(params, out_dir, spec)
            manifest = _write_folds_and_manifest(out_dir, dataset, source, files, standard_folds(dataset), spec)
            changed = True
    folds = json.loads((out_dir / manifest["folds"]).read_text())
    _summary(out_dir, manifest, folds, changed)
    return manifest
