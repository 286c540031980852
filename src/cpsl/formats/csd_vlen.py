"""How many bytes the elements of a variable-length HDF5 dataset point at, counted without reading them.

HDF5 stores each variable-length element (a vlen string or sequence) in the dataset's raw data as a descriptor:
its length (uint32, little-endian, in base elements) and the global-heap id of its bytes (the heap collection's
address, ``sizeof_addr`` bytes, and an object index, 4 bytes): 16 bytes in the usual file. Reading the dataset
materialises every element, ``sum(lengths) * base size`` bytes, however many descriptors name the same heap
object: h5py writes one object per element, but a hand-edited file can point every element at one large string
(issue 21: 900 entries x 4 MiB = 3.7 GB from a 4.4 MB file). HDF5 checks that a heap object's size equals the
descriptor's length before copying it, so the lengths are what a read costs.

:func:`payload_bytes` reads the descriptors themselves from the file (a contiguous dataset at its file offset,
in blocks; an unfiltered chunked one chunk by chunk) and sums the lengths of the elements inside the dataset's
extent, in memory bounded by one block or chunk of descriptors. Layouts it cannot read that way raise
:class:`UnboundedError`, and the caller refuses the dataset: compact (the descriptors sit in the object header)
and filtered chunks (HDF5 2.0 no longer writes filtered variable-length data; h5py and mmsdk never wrote compact).
"""
from __future__ import annotations

from math import prod

import h5py
import numpy as np

BLOCK_DESCRIPTORS = 1 << 16  # contiguous descriptors are summed 65,536 at a time (1 MiB)


class UnboundedError(Exception):
    """The descriptors cannot be read without HDF5 materialising the elements; the text says why."""


def _descriptor_size(dataset_id) -> int:
    sizeof_addr = h5py.h5i.get_file_id(dataset_id).get_create_plist().get_sizes()[0]
    return 4 + int(sizeof_addr) + 4


def _lengths(raw: bytes, descriptor: int) -> np.ndarray:
    count = len(raw) // descriptor
    table = np.frombuffer(raw, dtype=np.uint8, count=count * descriptor).reshape(count, descriptor)
    return table[:, :4].copy().view("<u4").ravel()


def _contiguous(handle, dataset_id, descriptor: int, npoints: int) -> int:
    offset = dataset_id.get_offset()
    if offset is None:  # never written: every element is the empty fill value
        return 0
    total, done = 0, 0
    while done < npoints:
        n = min(BLOCK_DESCRIPTORS, npoints - done)
        handle.seek(offset + done * descriptor)
        raw = handle.read(n * descriptor)
        if len(raw) < n * descriptor:
            raise UnboundedError(f"has variable-length descriptors past the end of the file (offset {offset})")
        total += int(_lengths(raw, descriptor).sum(dtype=np.int64))
        done += n
    return total


def _chunked(handle, dataset_id, descriptor: int) -> int:
    dcpl = dataset_id.get_create_plist()
    chunk = tuple(int(c) for c in dcpl.get_chunk())
    extent = tuple(int(n) for n in dataset_id.shape)
    if dcpl.get_nfilters():  # HDF5 2.0 refuses to write these ("not suitable for filters"); older ones could
        raise UnboundedError("has filtered variable-length data, whose descriptors cpsl cannot count before "
                             "reading")
    expected = prod(chunk) * descriptor
    records = []
    dataset_id.chunk_iter(records.append)
    total = 0
    for info in records:
        if info.size != expected:
            raise UnboundedError(f"has a chunk of {info.size} stored bytes at {tuple(info.chunk_offset)}, not the "
                                 f"{expected} bytes of its variable-length descriptors")
        handle.seek(info.byte_offset)
        raw = handle.read(expected)
        if len(raw) < expected:
            raise UnboundedError(f"has a chunk at {tuple(info.chunk_offset)} past the end of the file")
        lengths = _lengths(raw, descriptor).reshape(chunk)
        # an edge chunk's elements beyond the extent are never read
        inside = tuple(slice(0, max(0, n - int(o))) for n, o in zip(extent, info.chunk_offset))
        total += int(lengths[inside].sum(dtype=np.int64))
    return total


def payload_bytes(dataset_id, base_size: int) -> int:
    """The bytes a read of this variable-length dataset materialises: the sum of its elements' lengths times
    ``base_size`` (1 for strings), each element counted even when several name one heap object."""
    layout = dataset_id.get_create_plist().get_layout()
    npoints = int(dataset_id.get_space().get_simple_extent_npoints())
    if npoints == 0:
        return 0
    descriptor = _descriptor_size(dataset_id)
    path = h5py.h5f.get_name(dataset_id).decode("utf-8", "surrogateescape")
    with open(path, "rb") as handle:
        if layout == h5py.h5d.CONTIGUOUS:
            return _contiguous(handle, dataset_id, descriptor, npoints) * base_size
        if layout == h5py.h5d.CHUNKED:
            return _chunked(handle, dataset_id, descriptor) * base_size
    raise UnboundedError("stores variable-length data in the compact layout (descriptors inside the object "
                         "header), which cpsl cannot count before reading")
