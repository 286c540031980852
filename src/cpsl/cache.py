"""The aligned-data cache (``data/processed/<dataset>.h5``): the one file format shared by align, train
and evaluate.

Layout, schema version 1 (see docs/DESIGN.md)::

    /train|valid|test/input_ids       (N, L) int64
                     /attention_mask  (N, L) int8
                     /acoustic        (N, L, d_a) float32
                     /visual          (N, L, d_v) float32
                     /label           (N,) float32
                     /segment_id      (N,) utf-8 str
    root attrs: schema_version, dataset, tokenizer, max_seq_len, acoustic_name, visual_name,
                acoustic_dim, visual_dim, raw_manifest_sha256 (JSON role -> sha256), n_train, n_valid, n_test

Uncompressed on purpose: the file is small (MOSI: ~60 MB) and is read whole by every training run, so
decompression would only cost time. Writes go to a temporary file that is renamed into place only when
complete, so a reader never sees a half-written cache.
"""
from __future__ import annotations

from cpsl.errors import PipelineError
import json
from pathlib import Path
from typing import Mapping

import h5py
import numpy as np

from cpsl.io_utils import atomic_path

SCHEMA_VERSION = 1
SPLITS = ("train", "valid", "test")

# key -> (dtype, ndim); every array of a split shares its first dimension N.
ARRAYS: dict[str, tuple[type, int]] = {
    "input_ids": (np.int64, 2),
    "attention_mask": (np.int8, 2),
    "acoustic": (np.float32, 3),
    "visual": (np.float32, 3),
    "label": (np.float32, 1),
}
KEYS = tuple(ARRAYS) + ("segment_id",)

REQUIRED_ATTRS = (
    "dataset", "tokenizer", "max_seq_len", "acoustic_name", "visual_name",
    "acoustic_dim", "visual_dim", "raw_manifest_sha256",
)
_JSON_ATTRS = ("raw_manifest_sha256",)


class CacheError(PipelineError, ValueError):
    """A missing, outdated or malformed cache; the message names the file, split and key."""


def _check_split(path: Path, split: str, arrays: Mapping) -> int:
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise CacheError(f"{path}: split '{split}' lacks {missing}")
    n = len(arrays["segment_id"])
    seq_len = None
    for key, (_, ndim) in ARRAYS.items():
        arr = np.asarray(arrays[key])
        if arr.ndim != ndim or arr.shape[0] != n:
            raise CacheError(f"{path}: split '{split}' key '{key}' has shape {arr.shape}, expected {ndim}-d with N={n}")
        if ndim >= 2:
            if seq_len is None:
                seq_len = arr.shape[1]
            elif arr.shape[1] != seq_len:
                raise CacheError(f"{path}: split '{split}' key '{key}' has length {arr.shape[1]}, expected {seq_len}")
    return n


def write_cache(path: str | Path, splits: Mapping[str, Mapping[str, object]], attrs: Mapping) -> None:
    """Write all three splits and the root attributes, atomically (temp file, then rename)."""
    path = Path(path)
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or set(splits) != set(SPLITS):
        raise CacheError(f"{path}: splits must be exactly {SPLITS}, got {sorted(splits)}")
    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise CacheError(f"{path}: attributes lack {missing}")
    counts = {split: _check_split(path, split, splits[split]) for split in SPLITS}
    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.attrs["schema_version"] = SCHEMA_VERSION
            for key, value in attrs.items():
                h5.attrs[key] = json.dumps(value, sort_keys=True) if key in _JSON_ATTRS else value
            for split in SPLITS:
                h5.attrs[f"n_{split}"] = counts[split]
                group = h5.create_group(split)
                for key, (dtype, _) in ARRAYS.items():
                    group.create_dataset(key, data=np.asarray(splits[split][key], dtype=dtype))
                ids = [str(s) for s in splits[split]["segment_id"]]
                group.create_dataset("segment_id", data=np.array(ids, dtype=object),
                                     dtype=h5py.string_dtype("utf-8"), shape=(len(ids),))


def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise CacheError(f"{path}: cache not found (run `cpsl align` first)")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise CacheError(f"{path}: not a readable HDF5 cache ({exc}); rerun `cpsl align`") from exc
    version = _py(h5.attrs.get("schema_version"))
    if version is None or version != SCHEMA_VERSION:
        h5.close()
        raise CacheError(
            f"{path}: cache schema version {version}, this code reads version {SCHEMA_VERSION}; rerun `cpsl align`"
        )
    return h5


def _py(value):
    """h5py attribute -> plain Python value."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_attrs(path: str | Path) -> dict:
    """Root attributes as Python values; ``raw_manifest_sha256`` decoded to a dict."""
    path = Path(path)
    with _open(path) as h5:
        out = {key: _py(value) for key, value in h5.attrs.items()}
    for key in _JSON_ATTRS:
        if key in out:
            out[key] = json.loads(out[key])
    missing = [k for k in REQUIRED_ATTRS if k not in out]
    if missing:
        raise CacheError(f"{path}: root attributes lack {missing}")
    return out


def read_split(path: str | Path, split: str) -> dict:
    """One split as numpy arrays (dtypes as in the module docstring) plus ``segment_id`` as list[str]."""
    path = Path(path)
    if split not in SPLITS:
        raise CacheError(f"{path}: unknown split '{split}' (expected one of {SPLITS})")
    with _open(path) as h5:
        if split not in h5:
            raise CacheError(f"{path}: split '{split}' missing")
        group = h5[split]
        out: dict = {}
        for key, (dtype, _) in ARRAYS.items():
            if key not in group:
                raise CacheError(f"{path}: split '{split}' lacks key '{key}'")
            out[key] = np.asarray(group[key][()], dtype=dtype)
        if "segment_id" not in group:
            raise CacheError(f"{path}: split '{split}' lacks key 'segment_id'")
        out["segment_id"] = [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in group["segment_id"][()]]
    _check_split(path, split, out)
    return out
