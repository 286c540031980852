"""sha256 of the raw files, re-read only when a file changed: a stat record per verified file, as DVC's state
database and git's index keep.

A record is keyed by the file's identity (device, inode) and holds its size, mtime and ctime (ns) and sha256. A
file whose stat still matches its record is not read again; anything else is hashed again. The records of a raw
folder live next to it (``data/raw/.<dataset>.sha256-records.json``: outside the folder the engines track, so a
new record never makes align out of date) and serve prepare (the raw files and the mirror's; a hard-linked raw
file and its mirror file are one inode, hence one record) and align.

What a record does not see (docs/prepare.md): an edit that keeps the size and leaves mtime AND ctime unchanged.
The kernel sets ctime to the current time on every write, chmod, link or ``utime`` call, and no system call sets
it back, so that takes a change of the system clock, a write to the block device, or a file system whose
timestamps do not follow writes (some FUSE/network mounts). Two guards: a record is only kept when the file
had not changed for ``settle_ns`` before its hash ended (an edit within the same timestamp tick as the previous
one, on a file system with coarse timestamps, would otherwise look unchanged: git's "racy clean" case), and the
stat must be the same before and after the read. Bit rot below the file system is not seen either; delete the
records file to have every file read again.
"""
from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cpsl.runtime.io_utils import sha256_file, write_json_atomic

# A file changed less than this long before its hash ended gets no record (coarsest common timestamps: 2 s, FAT).
SETTLE_NS = 2_000_000_000
_FORMAT = 1


def records_path(raw_dir: str | Path) -> Path:
    """Where the records of a raw folder live: beside it, never inside it."""
    raw_dir = Path(raw_dir)
    return raw_dir.parent / f".{raw_dir.name}.sha256-records.json"


def _stat_key(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}"


def _stat_fields(st: os.stat_result) -> dict:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


class HashRecords:
    """The sha256 of files, from their stat record when it still matches (thread-safe: align hashes in threads).

    ``read``: the paths this object actually read (for the stage's output and the tests); ``read_s``: the wall
    time of sha256_many calls that read something."""

    def __init__(self, path: str | Path, settle_ns: int | None = None):
        self.path = Path(path)
        self.settle_ns = SETTLE_NS if settle_ns is None else settle_ns
        self.read: list[Path] = []
        self.read_s = 0.0  # wall time of the reads sha256_many did
        self._lock = threading.Lock()
        self._records = self._load()
        self._changed = False

    def _load(self) -> dict:
        # unreadable or foreign records cost a re-hash, never an error
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("files"), dict):
            return {}
        return {k: v for k, v in data["files"].items() if isinstance(v, dict)}

    def sha256(self, file: str | Path) -> str:
        file = Path(file)
        before = file.stat()
        key, fields = _stat_key(before), _stat_fields(before)
        with self._lock:
            record = self._records.get(key)
        if record is not None and {k: record.get(k) for k in fields} == fields and "sha256" in record:
            return record["sha256"]
        digest = sha256_file(file)
        after = file.stat()
        with self._lock:
            self.read.append(file)
            settled = time.time_ns() - max(after.st_mtime_ns, after.st_ctime_ns) >= self.settle_ns
            if _stat_key(after) == key and _stat_fields(after) == fields and settled:
                self._records[key] = {**fields, "sha256": digest, "path": str(file.absolute())}
            else:
                self._records.pop(key, None)
            self._changed = True
        return digest

    def sha256_many(self, files) -> list[str]:
        """The digests of ``files``, in order; the files that must be read are read in parallel (hashlib
        releases the GIL), which matters for MOSEI's 16 GB on several cores."""
        files, start, already = list(files), time.perf_counter(), len(self.read)
        with ThreadPoolExecutor(max_workers=max(1, min(len(files), os.cpu_count() or 1))) as pool:
            digests = list(pool.map(self.sha256, files))
        if len(self.read) > already:
            self.read_s += time.perf_counter() - start
        return digests

    def save(self) -> None:
        """Write the records (atomically) if anything changed, dropping those whose file is gone or replaced."""
        with self._lock:
            if not self._changed:
                return
            kept = {}
            for key, record in self._records.items():
                try:
                    st = os.stat(record.get("path", ""))
                except OSError:
                    continue
                if _stat_key(st) == key:
                    kept[key] = record
            self._records, self._changed = kept, False
        try:
            write_json_atomic(self.path, {"format": _FORMAT, "files": kept})
        except OSError:
            pass  # a read-only project still verifies; it only re-reads next time
