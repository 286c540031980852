"""Hostile raw inputs for `cpsl prepare` (issue 10, case 7): a mirror file edited in place without changing its
size must be noticed (sha256, not only the size)."""
from __future__ import annotations

import h5py
from fixtures_data import make_params, write_fake_mirror

import cpsl.stages.prepare as prepare_mod
from cpsl.runtime.io_utils import sha256_file


def test_same_size_edit_of_a_mirror_file_is_noticed(tmp_path, capsys):
    mirror, out = tmp_path / "mirror", tmp_path / "raw"
    src = write_fake_mirror(mirror, "mosi")
    params = make_params("mosi", mirror=str(mirror))
    prepare_mod.run_prepare(params, out)
    before_size, before_hash = src["labels"].stat().st_size, sha256_file(src["labels"])
    with h5py.File(src["labels"], "r+") as h5:  # a corrected label, written in place
        root = next(iter(h5))
        features = h5[root]["data"][next(iter(h5[root]["data"]))]["features"]
        features[0, 0] = -features[0, 0] + 0.25
    assert src["labels"].stat().st_size == before_size and sha256_file(src["labels"]) != before_hash
    capsys.readouterr()
    manifest = prepare_mod.run_prepare(params, out)
    assert "nothing to do" not in capsys.readouterr().out
    assert manifest["files"]["labels"]["sha256"] == sha256_file(src["labels"])
    assert sha256_file(out / src["labels"].name) == sha256_file(src["labels"])
    capsys.readouterr()
    prepare_mod.run_prepare(params, out)  # and unchanged again: a no-op
    assert "nothing to do" in capsys.readouterr().out
