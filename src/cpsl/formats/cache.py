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

import json
from pathlib import Path
from typing import Mapping

import h5py
import numpy as np

from cpsl.errors import PipelineError
from cpsl.formats.file_hashes import HashRecords, records_path
from cpsl.runtime.io_utils import hdf5_atomic

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


LABEL_RANGE = (-3.0, 3.0)  # the CMU sentiment scale


def _first(arrays: Mapping, bad: np.ndarray) -> str:
    return str(arrays["segment_id"][int(np.flatnonzero(bad)[0])])


def check_contents(path: Path, split: str, arrays: Mapping, attrs: Mapping | None = None) -> None:
    """Values a cache written by `cpsl align` always satisfies; anything else was made (or damaged) another
    way and would train silently on garbage or fail deep in the model. Names the split, key and segment."""
    where = f"{path}: split '{split}'"
    for key, dim_attr in (("acoustic", "acoustic_dim"), ("visual", "visual_dim")):
        if attrs is not None and dim_attr in attrs and arrays[key].shape[2] != int(attrs[dim_attr]):
            raise CacheError(f"{where} key '{key}' has width {arrays[key].shape[2]} but the attribute '{dim_attr}' "
                             f"says {attrs[dim_attr]}; rerun `cpsl align`")
    if len(arrays["label"]) == 0:
        return
    label = arrays["label"]
    bad = ~np.isfinite(label)
    if bad.any():
        raise CacheError(f"{where} has {int(bad.sum())} non-finite label(s), first segment '{_first(arrays, bad)}'; "
                         f"rerun `cpsl align`")
    bad = (label < LABEL_RANGE[0]) | (label > LABEL_RANGE[1])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CacheError(f"{where} has {int(bad.sum())} label(s) outside {list(LABEL_RANGE)}, first segment "
                         f"'{arrays['segment_id'][i]}' ({float(label[i])}); rerun `cpsl align`")
    mask = arrays["attention_mask"]
    bad = ~np.isin(mask, (0, 1)).all(axis=1)
    if bad.any():
        raise CacheError(f"{where} key 'attention_mask' holds values other than 0/1, first segment "
                         f"'{_first(arrays, bad)}'; rerun `cpsl align`")
    bad = ~mask.any(axis=1)
    if bad.any():
        raise CacheError(f"{where} has {int(bad.sum())} segment(s) with an all-zero attention mask (no tokens), "
                         f"first '{_first(arrays, bad)}'; rerun `cpsl align`")
    bad = (arrays["input_ids"] < 0).any(axis=1)
    if bad.any():
        raise CacheError(f"{where} key 'input_ids' has negative token ids, first segment '{_first(arrays, bad)}'")
    for key in ("acoustic", "visual"):
        # `cpsl align` zeroes non-finite features; the per-batch min-max normalisation would silently
        # turn them into zeros
        bad = ~np.isfinite(arrays[key]).reshape(len(arrays[key]), -1).all(axis=1)
        if bad.any():
            raise CacheError(f"{where} key '{key}' has non-finite values in {int(bad.sum())} segment(s), first "
                             f"'{_first(arrays, bad)}'")


def check_token_ids(path: str | Path, vocab_size: int, model_name: str) -> None:
    """Every token id of every split must exist in the text model's vocabulary (an embedding lookup of an
    unknown id fails deep inside the model); names split and segment."""
    path = Path(path)
    with _open(path) as h5:
        for split in SPLITS:
            if split not in h5 or "input_ids" not in h5[split]:
                continue
            ids = np.asarray(h5[split]["input_ids"][()])
            bad = (ids >= vocab_size).any(axis=1) if ids.ndim == 2 else np.zeros(0, bool)
            if bad.any():
                seg = h5[split]["segment_id"][int(np.flatnonzero(bad)[0])]
                seg = seg.decode("utf-8", "replace") if isinstance(seg, bytes) else str(seg)
                raise CacheError(f"{path}: split '{split}' has token id {int(ids.max())} but the text model "
                                 f"{model_name!r} has {vocab_size} tokens, first segment '{seg}'; the cache was "
                                 f"made with another tokenizer: rerun `cpsl align`")


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
    with hdf5_atomic(path) as h5:  # built in memory: a full disk or `ulimit -f` is one clear error
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


def content_identity(path: str | Path) -> dict:
    """{"sha256": ...} of the cache file: what a run's identity (cpsl.formats.run_identity) records of its data. An edit
    in place that keeps the size, the attributes and even the mtime still changes it. Cheap when nothing changed:
    the digest is kept in a stat record beside the cache (cpsl.formats.file_hashes: ``.<name>.sha256-records.json``) and
    the file is read again only when its size, mtime or ctime moved."""
    path = Path(path)
    _open(path).close()  # a missing or unreadable cache fails here, naming it
    records = HashRecords(records_path(path))
    digest = records.sha256(path)
    records.save()
    return {"sha256": digest}


def read_labels(path: str | Path, split: str) -> np.ndarray:
    """The labels of one split only (float64), without reading its features."""
    path = Path(path)
    with _open(path) as h5:
        if split not in h5 or "label" not in h5[split]:
            raise CacheError(f"{path}: split '{split}' lacks key 'label'")
        return np.asarray(h5[split]["label"][()], dtype=np.float64)


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
        attrs = {key: _py(h5.attrs[key]) for key in ("acoustic_dim", "visual_dim") if key in h5.attrs}
    _check_split(path, split, out)
    check_contents(path, split, out, attrs)
    return out
