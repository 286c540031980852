"""What a raw .csd file may contain: data of its own, in bounded amounts. The policy, in one place.

A computational sequence comes from the network (the CMU server is plain HTTP) or from a mirror folder: it is
untrusted input. HDF5 lets a file pull data from elsewhere, and lets a small file declare huge arrays. Before any
data of an object is read, cpsl refuses (:class:`NotSelfContainedError`, one line naming the file and the object):

* links other than hard links: an *external link* opens another file when traversed; a *soft link* can alias one
  video's data under another id (the CMU files, written by mmsdk, hold hard links only);
* *external raw storage* (``H5Pset_external``): the dataset's bytes live in another file, e.g. ``/etc/passwd``;
* *virtual datasets*: they map other files' datasets;
* filters other than deflate (gzip), shuffle, fletcher32 and lzf: any other id makes HDF5 look for a plugin
  (a shared library on ``HDF5_PLUGIN_PATH``), and the lossy/run-length ones (scale-offset, n-bit, szip) have no
  useful bound on how much they expand;
* more declared bytes than the stored bytes can expand to: unfiltered data must be stored in full (unwritten
  chunks would be filled in memory), filtered data at most by its filters' maximum ratio (deflate 1032:1, lzf
  88:1, shuffle and fletcher32 1:1), and no dataset may claim more stored bytes than the whole file holds;
* one array larger than :data:`MAX_ARRAY_BYTES` (the memory budget of one read: the reader loads one video's
  array at a time; the longest MOSEI video's COVAREP array is about 70 MB).

Not checked: attributes (never read), variable-length strings' heap objects (they live in the file; a
hand-crafted file whose many strings share one large heap object could still expand by the number of
references; h5py cannot write one, and the metadata strings read are single elements).

:func:`check_file` walks a whole file (prepare, before a downloaded, mirrored or generated file is accepted);
:func:`hard_member` and :func:`check_dataset` are what the reader (cpsl.csd) calls on the objects it reads, so a
file placed in the raw folder by other means is refused by align too, before its data are read.
"""
from __future__ import annotations

from pathlib import Path

import h5py

from cpsl.errors import PipelineError

# one array read at a time (a video's features); 14x the largest real one
MAX_ARRAY_BYTES = 1 << 30
# the largest expansion each accepted filter can give (deflate's format limit; lzf: 264 bytes from a 3-byte
# back-reference); a pipeline's bound is the product
FILTER_MAX_RATIO = {
    h5py.h5z.FILTER_DEFLATE: 1032,
    h5py.h5z.FILTER_SHUFFLE: 1,
    h5py.h5z.FILTER_FLETCHER32: 1,
    h5py.h5z.FILTER_LZF: 88,
}
FILTER_NAMES = {h5py.h5z.FILTER_DEFLATE: "deflate/gzip", h5py.h5z.FILTER_SHUFFLE: "shuffle",
                h5py.h5z.FILTER_FLETCHER32: "fletcher32", h5py.h5z.FILTER_LZF: "lzf"}
# small objects (metadata strings, one-row arrays) need no ratio argument: at most this much in memory
SLACK_BYTES = 64 << 10
_LINK_KIND = {h5py.h5l.TYPE_SOFT: "a soft link", h5py.h5l.TYPE_EXTERNAL: "an external link"}


class NotSelfContainedError(PipelineError, ValueError):
    """A raw file whose data would come from elsewhere or would not fit; names the file and the object."""


def _refuse(shown, obj: str, what: str) -> NotSelfContainedError:
    return NotSelfContainedError(
        f"{shown}: HDF5 object '{obj}' {what}; a raw computational sequence must hold its own data in bounded "
        f"amounts, so this file is refused (re-download it, or replace the mirror file with the CMU original)")


def _decode(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _join(parent: str, name: str) -> str:
    return f"{parent.rstrip('/')}/{name}"


def check_link(shown, group_id, name: str, where: str) -> None:
    """Refuse ``name`` in the group unless it is a hard link (inspected without traversing it). ``shown``: the
    file as errors name it."""
    encoded = name.encode("utf-8")
    kind = group_id.links.get_info(encoded).type
    if kind == h5py.h5l.TYPE_HARD:
        return
    target = ""
    if kind in _LINK_KIND:
        value = group_id.links.get_val(encoded)
        target = (f" to '{_decode(value[0])}:{_decode(value[1])}'" if kind == h5py.h5l.TYPE_EXTERNAL
                  else f" to '{_decode(value)}'")
    raise _refuse(shown, where, f"is {_LINK_KIND.get(kind, f'a user-defined link (type {kind})')}{target}")


def hard_member(shown, group: h5py.Group, name: str):
    """``group[name]`` after checking that it is a hard link of this group; KeyError when absent."""
    if not name or "/" in name or name in (".", ".."):
        raise KeyError(name)
    if not group.id.links.exists(name.encode("utf-8")):
        raise KeyError(name)
    check_link(shown, group.id, name, _join(group.name, name))
    return group[name]


def _filter_ratio(shown, obj: str, dcpl) -> int:
    ratio = 1
    for i in range(dcpl.get_nfilters()):
        code, _flags, _values, name = dcpl.get_filter(i)
        if code not in FILTER_MAX_RATIO:
            label = f" ('{_decode(name)}')" if name else ""
            raise _refuse(shown, obj, f"needs HDF5 filter {code}{label}, not one of those cpsl reads "
                                     f"({', '.join(FILTER_NAMES.values())}); reading it would load a plugin")
        ratio *= FILTER_MAX_RATIO[code]
    return ratio


def check_dataset(shown, dataset_id, obj: str, file_size: int) -> int:
    """Refuse a dataset whose data live elsewhere or would not fit (module docstring); return its stored bytes.
    Reads the dataset's creation properties and storage size, never its data."""
    dcpl = dataset_id.get_create_plist()
    if dcpl.get_layout() == h5py.h5d.VIRTUAL:
        sources = sorted({_decode(dcpl.get_virtual_filename(i)) for i in range(dcpl.get_virtual_count())})
        raise _refuse(shown, obj, f"is a virtual dataset mapping data from {', '.join(repr(s) for s in sources)}")
    if dcpl.get_external_count():
        raise _refuse(shown, obj, f"stores its data in an external file ('{_decode(dcpl.get_external(0)[0])}')")
    ratio = _filter_ratio(shown, obj, dcpl)
    declared = int(dataset_id.get_space().get_simple_extent_npoints()) * int(dataset_id.get_type().get_size())
    stored = int(dataset_id.get_storage_size())
    shape = f"shape {tuple(int(n) for n in dataset_id.shape)} ({_size(declared)})"
    if declared > MAX_ARRAY_BYTES:
        raise _refuse(shown, obj, f"declares {shape}, beyond the {_size(MAX_ARRAY_BYTES)} one raw array may take "
                                 f"in memory")
    if stored > file_size:
        raise _refuse(shown, obj, f"claims {stored} stored bytes, more than the whole file ({file_size})")
    if declared > ratio * stored + SLACK_BYTES:
        how = "its filters can expand them to" if ratio > 1 else "unfiltered data may declare"
        raise _refuse(shown, obj, f"declares {shape} but stores {stored} bytes, more than {how} "
                                 f"({ratio}x): unwritten or forged chunks")
    return stored


def check_file(path: str | Path, shown_as: str | None = None) -> None:
    """Walk every link and dataset of the file (module docstring); raise NotSelfContainedError on the first
    problem, naming the file as ``shown_as`` (default: its path). Cost: one open per object (docs/prepare.md)."""
    path = Path(path)
    shown = shown_as or path
    file_size = path.stat().st_size
    with h5py.File(path, "r") as h5:
        links: list[tuple[str, int]] = []
        h5.id.links.visit(lambda name, info: links.append((_decode(name), info.type)), info=True)
        for name, kind in links:  # visit never traverses soft or external links; refuse them before any open
            if kind != h5py.h5l.TYPE_HARD:
                parent, _, base = ("/" + name).rpartition("/")
                check_link(shown, h5[parent or "/"].id, base, "/" + name)
        datasets: list[str] = []
        h5py.h5o.visit(h5.id, lambda name, info: datasets.append(_decode(name))
                       if info.type == h5py.h5o.TYPE_DATASET else None, info=True)
        total = 0
        for name in datasets:
            total += check_dataset(shown, h5py.h5d.open(h5.id, name.encode("utf-8")), "/" + name, file_size)
        if total > file_size:
            raise _refuse(shown, "/", f"(the whole file) has datasets claiming {total} stored bytes together, more "
                                     f"than the file holds ({file_size}): forged chunk records")

