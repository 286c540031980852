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
  array at a time; the longest MOSEI video's COVAREP array is about 70 MB);
* chunks larger than :data:`MAX_CHUNK_BYTES`: HDF5 decompresses a whole chunk whatever part of it a read needs,
  and a chunk may be larger than the array (issue 21: a 96 KB array in one 1.5 GiB gzip chunk); nor may the
  chunks an array spans decompress to more than :data:`MAX_ARRAY_BYTES` together;
* variable-length elements pointing at more bytes than the file holds, or than one read may take: their lengths
  are read from the elements' descriptors without materialising them (:mod:`cpsl.formats.csd_vlen`), so a file whose
  entries all name one large heap object (issue 21: 4.4 MB -> 3.7 GB) is refused; variable-length data that
  cannot be counted that way (compact layout, filtered, nested in a compound) is refused too;
* reading more, per reference, than the file holds (:class:`ReadBudget`): each dataset read adds its stored bytes
  and its elements' heap bytes, once per name it is reached by. A genuine file's objects occupy disjoint bytes of
  it; an array hard-linked under 44 videos (issue 21: 346 KB -> 9.7 GiB) is refused at the first alias that
  brings the total over the file's size;
* a walk deeper than :data:`MAX_DEPTH` groups or longer than :data:`MAX_LINKS` links (each name of a
  hard-linked group is walked again, so cycles and diamonds of hard links end here): the walk is iterative, on
  an explicit stack, so 20,000 nested groups neither overflow the C stack (``H5Lvisit``/``H5Ovisit`` recurse)
  nor take minutes.

Not checked: attributes (never read).

:func:`check_file` walks a whole file (prepare, before a downloaded, mirrored or generated file is accepted);
:func:`hard_member` and :func:`check_dataset` are what the reader (cpsl.formats.csd) calls on the objects it reads, so a
file placed in the raw folder by other means is refused by align too, before its data are read.
"""
from __future__ import annotations

from math import prod
from pathlib import Path

import h5py

from cpsl.errors import PipelineError
from cpsl.formats.csd_vlen import UnboundedError, payload_bytes

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
# HDF5 decompresses a whole chunk for any read that touches it; h5py's automatic chunks stay under 1 MiB and
# mmsdk writes contiguous arrays, so 64x that is generous
MAX_CHUNK_BYTES = 64 << 20
# the .csd layout puts datasets 4 levels down (/<root>/data/<video>/features): groups go 3 deep
MAX_DEPTH = 16
# links walked, one per name (a MOSEI-sized file: 23,000 videos x 3 + metadata, about 70,000)
MAX_LINKS = 200_000
# what h5py adds per variable-length element it materialises (a bytes object and its pointer)
VLEN_ELEMENT_BYTES = 64
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


def check_link(shown, group_id, name: str | bytes, where: str) -> None:
    """Refuse ``name`` in the group unless it is a hard link (inspected without traversing it). ``shown``: the
    file as errors name it."""
    encoded = name if isinstance(name, bytes) else name.encode("utf-8")
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


def _check_chunks(shown, obj: str, dcpl, dims: tuple[int, ...], itemsize: int) -> None:
    if dcpl.get_layout() != h5py.h5d.CHUNKED:
        return
    chunk = tuple(int(c) for c in dcpl.get_chunk())
    one = prod(chunk) * itemsize
    if one > MAX_CHUNK_BYTES:
        raise _refuse(shown, obj, f"is stored in chunks of shape {chunk} ({_size(one)} each, decompressed whole by "
                                 f"any read), beyond the {_size(MAX_CHUNK_BYTES)} one chunk may take")
    count = prod(-(-n // c) for n, c in zip(dims, chunk))
    if count * one > MAX_ARRAY_BYTES:
        raise _refuse(shown, obj, f"spans {count} chunks of shape {chunk}: reading it decompresses "
                                 f"{_size(count * one)}, beyond the {_size(MAX_ARRAY_BYTES)} one raw array may take "
                                 f"in memory")


def _vlen_base_size(shown, obj: str, tid) -> int | None:
    """The size of one base element of a variable-length type (1 for a string); None for fixed-size data."""
    kind = tid.get_class()
    if kind == h5py.h5t.STRING:
        return 1 if tid.is_variable_str() else None
    if kind == h5py.h5t.VLEN:
        base = tid.get_super()
        if base.get_class() != h5py.h5t.VLEN and not base.detect_class(h5py.h5t.VLEN) and not (
                base.get_class() == h5py.h5t.STRING and base.is_variable_str()):
            return int(base.get_size())
    elif not tid.detect_class(h5py.h5t.VLEN):
        return None
    raise _refuse(shown, obj, "holds variable-length data nested inside another type, whose size cpsl cannot count "
                             "before reading")


def _heap_bytes(shown, obj: str, dataset_id, npoints: int, declared: int, file_size: int) -> int:
    """The heap bytes a read of the dataset materialises (0 for fixed-size data), refused beyond the budgets."""
    base = _vlen_base_size(shown, obj, dataset_id.get_type())
    if base is None:
        return 0
    try:
        heap = payload_bytes(dataset_id, base)
    except UnboundedError as exc:
        raise _refuse(shown, obj, str(exc)) from None
    if heap > file_size:
        raise _refuse(shown, obj, f"has {npoints} variable-length elements pointing at {heap} bytes together, more "
                                 f"than the whole file ({file_size}): elements sharing one heap object")
    memory = declared + heap + npoints * VLEN_ELEMENT_BYTES
    if memory > MAX_ARRAY_BYTES:
        raise _refuse(shown, obj, f"has {npoints} variable-length elements that take {_size(memory)} once read, "
                                 f"beyond the {_size(MAX_ARRAY_BYTES)} one raw array may take in memory")
    return heap


def check_dataset(shown, dataset_id, obj: str, file_size: int) -> int:
    """Refuse a dataset whose data live elsewhere or would not fit (module docstring); return what reading it
    costs against the file's :class:`ReadBudget`: its stored bytes plus the heap bytes its variable-length
    elements point at. Reads the dataset's creation properties, storage size and variable-length descriptors,
    never its data."""
    dcpl = dataset_id.get_create_plist()
    if dcpl.get_layout() == h5py.h5d.VIRTUAL:
        sources = sorted({_decode(dcpl.get_virtual_filename(i)) for i in range(dcpl.get_virtual_count())})
        raise _refuse(shown, obj, f"is a virtual dataset mapping data from {', '.join(repr(s) for s in sources)}")
    if dcpl.get_external_count():
        raise _refuse(shown, obj, f"stores its data in an external file ('{_decode(dcpl.get_external(0)[0])}')")
    ratio = _filter_ratio(shown, obj, dcpl)
    dims = tuple(int(n) for n in dataset_id.shape or ())  # a null dataspace has no shape
    npoints = int(dataset_id.get_space().get_simple_extent_npoints())
    itemsize = int(dataset_id.get_type().get_size())
    declared = npoints * itemsize
    stored = int(dataset_id.get_storage_size())
    shape = f"shape {dims} ({_size(declared)})"
    if declared > MAX_ARRAY_BYTES:
        raise _refuse(shown, obj, f"declares {shape}, beyond the {_size(MAX_ARRAY_BYTES)} one raw array may take "
                                 f"in memory")
    if stored > file_size:
        raise _refuse(shown, obj, f"claims {stored} stored bytes, more than the whole file ({file_size})")
    if declared > ratio * stored + SLACK_BYTES:
        how = "its filters can expand them to" if ratio > 1 else "unfiltered data may declare"
        raise _refuse(shown, obj, f"declares {shape} but stores {stored} bytes, more than {how} "
                                 f"({ratio}x): unwritten or forged chunks")
    _check_chunks(shown, obj, dcpl, dims, itemsize)
    return stored + _heap_bytes(shown, obj, dataset_id, npoints, declared, file_size)


class ReadBudget:
    """What reading one file may cost, counted per reference: each dataset read adds :func:`check_dataset`'s
    cost once per name it is read by. The objects of a genuine file occupy disjoint bytes of it, so the total of
    single readings stays within the file's size; an array hard-linked under many videos does not."""

    def __init__(self, shown, file_size: int):
        self.shown, self.file_size, self.spent = shown, file_size, 0

    def charge(self, obj: str, cost: int) -> None:
        self.spent += cost
        if self.spent > self.file_size:
            raise _refuse(self.shown, obj, f"brings the bytes read from the file to {self.spent} (stored and heap "
                                          f"bytes, per name), more than the file holds ({self.file_size}): data "
                                          f"reached under several names (hard links) or shared by many elements")


def _members(group, most: int) -> list[tuple[bytes, int]]:
    """(name, link type) of the group's links, at most ``most`` of them (one huge group costs no more)."""
    members: list[tuple[bytes, int]] = []
    group.links.iterate(lambda name, info: members.append((name, info.type)) or (len(members) >= most or None),
                        info=True)
    return members


def check_file(path: str | Path, shown_as: str | None = None) -> None:
    """Walk every link of the file, per name, and check every dataset (module docstring); raise
    NotSelfContainedError on the first problem, naming the file as ``shown_as`` (default: its path) and the
    object. Iterative (an explicit stack), so no depth of nesting reaches HDF5's recursive visitors. Cost: one
    open per object (docs/prepare.md)."""
    path = Path(path)
    shown = shown_as or path
    file_size = path.stat().st_size
    budget = ReadBudget(shown, file_size)
    links = 0
    with h5py.File(path, "r") as h5:
        # links still to check, depth first in name order: (parent group, link name, link type, path, depth)
        stack = [(h5.id, b"/", h5py.h5l.TYPE_HARD, "/", 0)]
        while stack:
            parent, name, kind, where, depth = stack.pop()
            if kind != h5py.h5l.TYPE_HARD:
                check_link(shown, parent, name, where)
            found = h5py.h5o.get_info(parent, name=name).type
            if found == h5py.h5o.TYPE_DATASET:
                budget.charge(where, check_dataset(shown, h5py.h5d.open(parent, name), where, file_size))
            if found != h5py.h5o.TYPE_GROUP:
                continue
            if depth > MAX_DEPTH:
                raise _refuse(shown, where, f"is a group nested {depth} levels deep, beyond the {MAX_DEPTH} a raw "
                                            f"file may have")
            group = h5py.h5g.open(parent, name)
            members = _members(group, MAX_LINKS - links + 1)
            links += len(members)
            if links > MAX_LINKS:
                raise _refuse(shown, where, f"has links beyond the {MAX_LINKS} a raw file may have in all (each "
                                            f"name of a hard-linked object counts)")
            stack.extend((group, member, kind, _join(where, _decode(member)), depth + 1)
                         for member, kind in reversed(members))
