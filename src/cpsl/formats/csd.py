"""Reading and writing CMU computational sequences (.csd) without the SDK's prompts and prints.

Layout (as written by mmsdk's ``writeCSD`` and served by the CMU server)::

    /<root name>/data/<video_id>/intervals   float (T, 2), seconds
    /<root name>/data/<video_id>/features    (T, d) float, or (T, 1) bytes for the word stream
    /<root name>/metadata/<field>            vlen str, shape (1,)

mmsdk returns metadata as bytes on Python 3 and calls ``input()`` when fields are missing; this module
decodes metadata, never prompts, and turns every malformed case into a :class:`CSDError` that names
the file and the video. Every link it follows and every dataset it reads is first checked by
:mod:`cpsl.formats.csd_safety` (hard links only, data stored in this file, bounded sizes), so a hostile file is refused
before any of its data is read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Mapping

import h5py
import numpy as np

from cpsl.errors import PipelineError
from cpsl.formats.csd_safety import ReadBudget, check_dataset, hard_member
from cpsl.runtime.io_utils import hdf5_atomic

# What the reader accepts as an array's elements, by HDF5 type class: intervals and the acoustic, visual and label
# features are real numbers; the word stream is strings (fixed or variable length). Anything else (compound, as
# h5py writes complex numbers; enum, as it writes bools; references, opaque, ...) is refused before reading.
NUMBERS = (h5py.h5t.INTEGER, h5py.h5t.FLOAT)
NUMBERS_OR_TEXT = NUMBERS + (h5py.h5t.STRING,)
_SPACE = {h5py.h5s.NULL: "a null dataspace (no shape, no elements)", h5py.h5s.SCALAR: "a scalar (no rows)"}

# The metadata fields mmsdk's deploy() insists on (it prompts for missing ones).
METADATA_FIELDS = (
    "root name",
    "computational sequence description",
    "computational sequence version",
    "alignment compatible",
    "dataset name",
    "dataset version",
    "creator",
    "contact",
    "featureset bib citation",
    "dataset bib citation",
)


class CSDError(PipelineError, ValueError):
    """A malformed or unreadable computational sequence; the message names file and video."""


def _decode(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


class ComputationalSequence:
    """A read-only handle on one .csd file. Video arrays are read on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CSDError(f"{self.path}: file not found")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise CSDError(f"{self.path}: not a readable HDF5 computational sequence ({exc})") from exc
        self._size = self.path.stat().st_size
        self._budget = ReadBudget(self.path, self._size)  # what all reads of this handle may cost (csd_safety)
        try:
            self._open_groups()
        except BaseException:
            self.close()
            raise

    def _open_groups(self) -> None:
        roots = list(self._h5.keys())  # link names only: nothing is traversed before hard_member checks it
        if len(roots) != 1:
            raise CSDError(f"{self.path}: expected exactly one root group, found {roots}")
        self.root_name = roots[0]
        root = self._member(self._h5, self.root_name)
        try:
            self._data = self._member(root, "data")
        except KeyError:
            raise CSDError(f"{self.path}: root group '{self.root_name}' has no 'data' group") from None
        self.metadata: dict[str, str] = {}
        try:
            fields = self._member(root, "metadata")
        except KeyError:
            return
        for key in fields.keys():
            ds = self._member(fields, key)
            try:
                self._check(ds, f"{fields.name}/{key}")
                self.metadata[key] = _decode(ds[0]) if ds.shape else _decode(ds[()])
            except CSDError:
                raise
            except Exception as exc:  # noqa: BLE001 - any h5 read error means a corrupt file
                raise CSDError(f"{self.path}: unreadable metadata field '{key}' ({exc})") from exc

    def _member(self, group: h5py.Group, name: str):
        """``group[name]``, refused (csd_safety) unless a hard link of this file; KeyError when absent."""
        return hard_member(self.path, group, name)

    def _check(self, ds: h5py.Dataset, where: str) -> None:
        """Refuse ``ds`` (reached as ``where``: a hard-linked alias has several names) before any data is read;
        charge its cost to this handle's budget."""
        if not isinstance(ds, h5py.Dataset):
            raise CSDError(f"{self.path}: HDF5 object '{where}' is a group, expected a dataset")
        self._budget.charge(where, check_dataset(self.path, ds.id, where, self._size))

    def _check_array(self, ds: h5py.Dataset, where: str, classes: tuple[int, ...], rows_of: str) -> None:
        """Refuse an array that is not 1-D or 2-D, or whose elements are not of ``classes``, from its dataspace
        and type alone (before reading)."""
        space = ds.id.get_space().get_simple_extent_type()
        what = _SPACE.get(space)
        if what is None and ds.id.rank > 2:
            what = f"shape {ds.shape} ({ds.id.rank}-D)"
        kind = ds.id.get_type().get_class()
        if what is None and kind not in classes:
            what = "strings" if kind == h5py.h5t.STRING else f"elements of type {_type_name(ds)}"
        if what is not None:
            kinds = "real numbers" if classes == NUMBERS else "real numbers or strings"
            raise CSDError(f"{self.path}: HDF5 object '{where}' has {what}; expected {rows_of} of {kinds}, a (T, d) "
                           f"or (T,) array (re-download the file, or replace it with the CMU original)")

    def close(self) -> None:
        try:
            self._h5.close()
        except Exception:  # noqa: BLE001
            pass

    def __enter__(self) -> "ComputationalSequence":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def video_ids(self) -> list[str]:
        return list(self._data.keys())

    def __contains__(self, video_id: str) -> bool:
        # H5Lexists never traverses the link (h5py's `in` would follow an external one)
        return bool(video_id) and "/" not in video_id and self._data.id.links.exists(video_id.encode("utf-8"))

    def __iter__(self) -> Iterator[str]:
        return iter(self.video_ids())

    def read(self, video_id: str, numeric: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(intervals (T,2) float64, features (T,d))`` for one video, checked for shape and element type
        before reading (``numeric``: features must be numbers, not strings)."""
        try:
            group = self._member(self._data, video_id)
        except KeyError:
            raise CSDError(f"{self.path}: video '{video_id}' not found") from None
        try:
            arrays = [self._member(group, name) for name in ("intervals", "features")]
        except KeyError as exc:
            raise CSDError(f"{self.path}: video '{video_id}' lacks {exc}") from exc
        where = [f"{self._data.name}/{video_id}/{name}" for name in ("intervals", "features")]
        for ds, path in zip(arrays, where):
            self._check(ds, path)  # before any of its data is read
        self._check_array(arrays[0], where[0], NUMBERS, "time intervals")
        self._check_array(arrays[1], where[1], NUMBERS if numeric else NUMBERS_OR_TEXT, "feature rows")
        try:
            intervals = np.asarray(arrays[0][()], dtype=np.float64)
            features = arrays[1][()]
        except Exception as exc:  # noqa: BLE001 - truncated/corrupt chunks raise assorted h5py errors
            raise CSDError(f"{self.path}: video '{video_id}' is unreadable ({exc})") from exc
        if intervals.ndim == 1 and intervals.shape[0] == 2:
            intervals = intervals[None, :]
        if intervals.ndim != 2 or intervals.shape[1] != 2:
            raise CSDError(f"{self.path}: video '{video_id}' has intervals of shape {intervals.shape}, expected (T, 2)")
        if features.ndim == 1:
            features = features[:, None]
        if features.shape[0] != intervals.shape[0]:
            raise CSDError(
                f"{self.path}: video '{video_id}' has {intervals.shape[0]} intervals but {features.shape[0]} "
                f"feature rows"
            )
        if not np.all(np.isfinite(intervals)):
            raise CSDError(f"{self.path}: video '{video_id}' has non-finite interval times")
        return intervals, features

    def read_words(self, video_id: str) -> tuple[np.ndarray, list[str]]:
        """The word stream of one video: intervals and decoded word strings. Words are stored as bytes; a
        numeric stream (e.g. a feature file given as the words) and bytes that are not UTF-8 are errors
        naming the word, never silently turned into "0.0" or U+FFFD."""
        intervals, features = self.read(video_id)
        if features.dtype.kind not in "SOUa":
            raise CSDError(f"{self.path}: video '{video_id}' has numeric features ({features.dtype}), not words; "
                           f"is this file really the word stream (TimestampedWords)?")
        words = []
        for i, w in enumerate(features[:, 0] if features.ndim == 2 else features):
            if isinstance(w, bytes):
                try:
                    w = w.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise CSDError(f"{self.path}: video '{video_id}' word {i} is not valid UTF-8 ({w[:40]!r}, "
                                   f"byte {exc.start}); fix the file or re-download it") from exc
            elif not isinstance(w, str):
                raise CSDError(f"{self.path}: video '{video_id}' word {i} is a {type(w).__name__}, not text")
            words.append(w)
        return intervals, words

    def feature_dim(self) -> int:
        """Feature dimension, read from the file (first video)."""
        ids = self.video_ids()
        if not ids:
            raise CSDError(f"{self.path}: holds no videos")
        try:
            ds = self._member(self._member(self._data, ids[0]), "features")
        except KeyError as exc:
            raise CSDError(f"{self.path}: video '{ids[0]}' lacks {exc}") from exc
        if not isinstance(ds, h5py.Dataset):
            raise CSDError(f"{self.path}: HDF5 object '{self._data.name}/{ids[0]}/features' is a group, expected a "
                           f"dataset")
        self._check_array(ds, f"{self._data.name}/{ids[0]}/features", NUMBERS_OR_TEXT, "feature rows")
        return int(ds.shape[1]) if len(ds.shape) > 1 else 1


def _type_name(ds: h5py.Dataset) -> str:
    try:
        return str(ds.dtype)
    except Exception:  # noqa: BLE001 - h5py has no numpy dtype for some HDF5 types (e.g. references of old kinds)
        return f"HDF5 class {ds.id.get_type().get_class()}"


def open_csd(path: str | Path) -> ComputationalSequence:
    return ComputationalSequence(path)


def write_csd(
    path: str | Path,
    root_name: str,
    data: Mapping[str, tuple[np.ndarray, np.ndarray]],
    metadata: Mapping[str, str],
) -> None:
    """Write a .csd in the SDK's layout, atomically. ``data`` maps video id -> (intervals, features)."""
    missing = [f for f in METADATA_FIELDS if f not in metadata and f != "root name"]
    if missing:
        raise CSDError(f"{path}: metadata lacks {missing}")
    with hdf5_atomic(path, suffix="") as h5:  # built in memory: a full disk or `ulimit -f` is one clear error
        root = h5.create_group(root_name)
        data_group = root.create_group("data")
        for vid, (intervals, features) in data.items():
            g = data_group.create_group(vid)
            g.create_dataset("features", data=features)
            g.create_dataset("intervals", data=np.asarray(intervals, dtype=np.float64))
        meta_group = root.create_group("metadata")
        full = {"root name": root_name, **dict(metadata)}
        for key, value in full.items():
            ds = meta_group.create_dataset(key, (1,), dtype=h5py.special_dtype(vlen=str))
            ds[0] = str(value)
