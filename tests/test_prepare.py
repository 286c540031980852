"""Stage prepare: demo / mirror / download, the manifest contract, no-op re-runs and bad raw input."""
from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
from fixtures_data import LocalServer, force_copy, free_port, make_params, write_fake_mirror

import cpsl.data.mirror as mirror_mod
import cpsl.stages.prepare as prepare_mod
from cpsl.data.sources import ROLES, RawDataError, dataset_spec, standard_folds
from cpsl.runtime.io_utils import sha256_file


def _listing(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _check_manifest(out, dataset, source):
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest) == {"dataset", "source", "files", "folds"}
    assert (manifest["dataset"], manifest["source"], manifest["folds"]) == (dataset, source, "folds.json")
    spec = dataset_spec(dataset)
    assert set(manifest["files"]) == set(ROLES)
    for role, entry in manifest["files"].items():
        # a mirror file records how it was placed (reflink, hard link or copy)
        assert set(entry) == {"name", "sha256", "size", "url"} | ({"placed"} if source == "mirror" else set())
        path = out / entry["name"]
        assert entry["name"] == spec.file(role).name
        assert entry["sha256"] == sha256_file(path) and entry["size"] == path.stat().st_size
    return manifest


# ---------------------------------------------------------------- demo


def test_demo_writes_complete_folder(tmp_path, capsys):
    out = tmp_path / "raw"
    returned = prepare_mod.run_prepare(make_params("demo"), out)
    manifest = _check_manifest(out, "demo", "demo")
    assert returned == manifest and all(e["url"] is None for e in manifest["files"].values())
    folds = json.loads((out / "folds.json").read_text())
    assert sum(len(v) for v in folds.values()) == 6 and set(folds) == {"train", "valid", "test"}
    assert _listing(out) == sorted([e["name"] for e in manifest["files"].values()] + ["folds.json", "manifest.json"])
    text = capsys.readouterr().out
    assert "dim 74" in text and "dim 35" in text  # dims reported from the files


def test_demo_rerun_is_a_noop_and_a_new_seed_regenerates(tmp_path, capsys):
    out = tmp_path / "raw"
    first = prepare_mod.run_prepare(make_params("demo"), out)
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert prepare_mod.run_prepare(make_params("demo"), out) == first
    assert "nothing to do" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamp  # untouched
    second = prepare_mod.run_prepare(make_params("demo", seed=4), out)
    assert second["files"]["acoustic"]["sha256"] != first["files"]["acoustic"]["sha256"]
    _check_manifest(out, "demo", "demo")


def test_demo_damaged_file_is_regenerated(tmp_path):
    out = tmp_path / "raw"
    first = prepare_mod.run_prepare(make_params("demo"), out)
    labels = out / first["files"]["labels"]["name"]
    labels.write_bytes(labels.read_bytes()[:100])
    assert prepare_mod.run_prepare(make_params("demo"), out) == first
    assert sha256_file(labels) == first["files"]["labels"]["sha256"]


# ---------------------------------------------------------------- mirror


def test_mirror_links_checks_and_records_sdk_urls(tmp_path, capsys):
    mirror, out = tmp_path / "mirror", tmp_path / "raw"
    src = write_fake_mirror(mirror, "mosi")
    prepare_mod.run_prepare(make_params("mosi", mirror=str(mirror)), out)
    manifest = _check_manifest(out, "mosi", "mirror")
    spec = dataset_spec("mosi")
    placed = {manifest["files"][role]["placed"] for role in ROLES}
    assert len(placed) == 1 and placed <= {"reflink", "hard link"}  # one file system: no byte copied
    assert f"{placed.pop()} x4" in capsys.readouterr().out
    for role in ROLES:
        assert manifest["files"][role]["url"] == spec.file(role).url
        assert manifest["files"][role]["sha256"] == sha256_file(src[role])
        if manifest["files"][role]["placed"] == "hard link":
            assert os.path.samefile(src[role], out / spec.file(role).name)
    assert json.loads((out / "folds.json").read_text()) == standard_folds("mosi")
    capsys.readouterr()
    prepare_mod.run_prepare(make_params("mosi", mirror=str(mirror)), out)
    assert "nothing to do" in capsys.readouterr().out


def test_mirror_missing_files_are_listed_and_nothing_written(tmp_path):
    mirror, out = tmp_path / "mirror", tmp_path / "raw"
    src = write_fake_mirror(mirror, "mosei")
    src["visual"].unlink()
    src["labels"].unlink()
    with pytest.raises(RawDataError) as info:
        prepare_mod.run_prepare(make_params("mosei", mirror=str(mirror)), out)
    msg = str(info.value)
    assert str(mirror) in msg and "CMU_MOSEI_VisualFacet42.csd" in msg and "CMU_MOSEI_LabelsSentiment.csd" in msg
    assert _listing(out) == []


def test_mirror_not_a_folder(tmp_path):
    with pytest.raises(RawDataError, match="not a folder"):
        prepare_mod.run_prepare(make_params("mosi", mirror=str(tmp_path / "nope")), tmp_path / "raw")


@pytest.mark.parametrize("damage", ["truncated", "random", "empty"])
def test_mirror_corrupt_file_is_named(tmp_path, damage):
    mirror, out = tmp_path / "mirror", tmp_path / "raw"
    src = write_fake_mirror(mirror, "mosi")
    data = src["acoustic"].read_bytes()
    bad = {"truncated": data[: len(data) // 2], "random": os.urandom(5000), "empty": b""}[damage]
    src["acoustic"].write_bytes(bad)
    with pytest.raises(RawDataError, match="CMU_MOSI_COVAREP.csd") as info:
        prepare_mod.run_prepare(make_params("mosi", mirror=str(mirror)), out)
    assert "empty" in str(info.value) if damage == "empty" else "corrupt or truncated" in str(info.value)
    assert not (out / "manifest.json").exists() and not list(out.glob("*.csd")) if out.exists() else True


def test_copy_failing_midway_leaves_no_partial_file(tmp_path, monkeypatch):
    mirror, out = tmp_path / "mirror", tmp_path / "raw"
    write_fake_mirror(mirror, "mosi")
    calls = []

    def half_copy_then_fail(src, dst):
        calls.append(src.name)
        if len(calls) == 2:
            dst.write_bytes(src.read_bytes()[:1000])
            raise OSError("disk full")
        dst.write_bytes(src.read_bytes())

    force_copy(monkeypatch)
    monkeypatch.setattr(mirror_mod, "_copy", half_copy_then_fail)
    with pytest.raises(OSError, match="disk full"):
        prepare_mod.run_prepare(make_params("mosi", mirror=str(mirror)), out)
    spec = dataset_spec("mosi")
    # only the file completed before the failure is there; no temporary, no manifest
    assert _listing(out) == [spec.file("words").name]


def test_previous_manifest_is_removed_before_rewriting(tmp_path, monkeypatch):
    mirror, out = tmp_path / "mirror", tmp_path / "raw"
    src = write_fake_mirror(mirror, "mosi")
    prepare_mod.run_prepare(make_params("mosi", mirror=str(mirror)), out)
    src["labels"].write_bytes(src["labels"].read_bytes() + b"x" * 10)  # mirror changed: size differs

    def fail(src_, dst):
        raise OSError("interrupted")

    force_copy(monkeypatch)
    monkeypatch.setattr(mirror_mod, "_copy", fail)
    with pytest.raises(OSError):
        prepare_mod.run_prepare(make_params("mosi", mirror=str(mirror)), out)
    assert not (out / "manifest.json").exists()  # the folder no longer claims to be complete


# ---------------------------------------------------------------- download


@pytest.fixture()
def served_mosi(tmp_path, monkeypatch):
    """MOSI's four file names served from a loopback server; dataset_spec patched to point there."""
    files = write_fake_mirror(tmp_path / "origin", "mosi")
    spec = dataset_spec("mosi")
    with LocalServer({"/" + p.name: p.read_bytes() for p in files.values()}) as srv:
        local = replace(spec, files={r: replace(f, url=srv.url("/" + f.name)) for r, f in spec.files.items()})
        monkeypatch.setattr(prepare_mod, "dataset_spec", lambda name: local)
        yield srv, local, files


def test_download_fetches_verifies_and_reruns_as_noop(tmp_path, served_mosi, capsys):
    srv, spec, origin = served_mosi
    out = tmp_path / "raw"
    prepare_mod.run_prepare(make_params("mosi"), out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == "download"
    for role in ROLES:
        assert manifest["files"][role]["url"] == spec.file(role).url
        assert manifest["files"][role]["sha256"] == sha256_file(origin[role])
    assert json.loads((out / "folds.json").read_text()) == standard_folds("mosi")
    hits = dict(srv.hits)
    capsys.readouterr()
    prepare_mod.run_prepare(make_params("mosi"), out)
    assert srv.hits == hits and "nothing to do" in capsys.readouterr().out


def test_interrupted_download_keeps_complete_files_and_resumes(tmp_path, served_mosi, capsys):
    srv, spec, _ = served_mosi
    out = tmp_path / "raw"
    visual = "/" + spec.file("visual").name
    srv.truncate_first[visual] = 99  # the visual file always arrives cut short
    with pytest.raises(RawDataError) as info:
        prepare_mod.run_prepare(make_params("mosi"), out)
    assert "data.mirror" in str(info.value)
    assert _listing(out) == sorted([spec.file("words").name, spec.file("acoustic").name])
    srv.truncate_first[visual] = 0
    capsys.readouterr()
    prepare_mod.run_prepare(make_params("mosi"), out)
    assert "already downloaded, kept" in capsys.readouterr().out
    assert srv.hits["/" + spec.file("words").name] == 1
    _check_manifest(out, "mosi", "download")


def test_served_garbage_is_rejected_by_name(tmp_path, served_mosi):
    srv, spec, _ = served_mosi
    srv.files["/" + spec.file("labels").name] = os.urandom(4096)
    with pytest.raises(RawDataError, match="CMU_MOSI_Opinion_Labels.csd.*corrupt or truncated"):
        prepare_mod.run_prepare(make_params("mosi"), tmp_path / "raw")
    assert spec.file("labels").name not in _listing(tmp_path / "raw")


def test_unreachable_server_tells_user_to_set_mirror(tmp_path, monkeypatch):
    spec = dataset_spec("mosei")
    dead = f"http://127.0.0.1:{free_port()}"
    local = replace(spec, files={r: replace(f, url=f"{dead}/{f.name}") for r, f in spec.files.items()})
    monkeypatch.setattr(prepare_mod, "dataset_spec", lambda name: local)
    with pytest.raises(RawDataError) as info:
        prepare_mod.run_prepare(make_params("mosei"), tmp_path / "raw")
    msg = str(info.value)
    assert "unreachable" in msg and "data.mirror" in msg
    assert all(name in msg for name in spec.file_names())
    assert _listing(tmp_path / "raw") == []


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path):
    out = tmp_path / "raw"
    out.mkdir()
    stale = [out / ".DEMO_COVAREP.csd.abc123.part.tmp", out / ".manifest.json.x1.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    (out / ".demo-build-zz").mkdir()
    keep = out / "notes.txt"  # not ours: left alone
    keep.write_text("user file")
    prepare_mod.run_prepare(make_params("demo"), out)
    names = _listing(out)
    assert not any(n.endswith(".tmp") or n.startswith(".demo-build") for n in names)
    assert "notes.txt" in names


def test_placement_is_the_cheapest_this_file_system_allows(tmp_path):
    """reflink where FICLONE works (checked on this file system), else a hard link; a copy only when neither
    works (forced: test_copy_failing_midway_leaves_no_partial_file). Verified by hand on a loop-mounted XFS
    (reflink=1): reflink x4, own inodes, and a write to a raw file left the mirror unchanged."""
    probe_src, probe = tmp_path / "probe-src", tmp_path / "probe"
    probe_src.write_bytes(b"x" * 4096)
    try:
        mirror_mod._reflink(probe_src, probe)
        expected = mirror_mod.REFLINK
    except OSError:
        expected = mirror_mod.HARD_LINK
    src = write_fake_mirror(tmp_path / "mirror", "mosi")
    out = tmp_path / "raw"
    manifest = prepare_mod.run_prepare(make_params("mosi", mirror=str(tmp_path / "mirror")), out)
    assert {manifest["files"][role]["placed"] for role in ROLES} == {expected}
    for role in ROLES:
        linked = os.path.samefile(src[role], out / src[role].name)
        assert linked == (expected == mirror_mod.HARD_LINK)
        assert sha256_file(out / src[role].name) == manifest["files"][role]["sha256"] == sha256_file(src[role])
