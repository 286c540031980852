"""A raw .csd file must not exhaust memory or time when read (issue 21, item 1).

Each hostile file is built here from a valid raw folder: (a) a small array stored as one 1.5 GiB gzip chunk;
(b) a word stream whose variable-length entries all point at one large string (h5py cannot write one: the
entries' 16-byte descriptors are patched in the written file); (c) videos hard-linked to one video's arrays;
(d) 20,000 nested groups; (e) feature arrays with a null dataspace, a scalar, 3-D, complex or string elements.
Align refuses each in one line naming the file and the HDF5 object, before reading the costly data; prepare's
whole-file walk refuses them too. The budgets are measured: a read that fails if the refused object's data is
touched, and the peak memory of a child process that opens the 1.5 GiB-chunk file.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from fixtures_align import FILES, ROOTS, make_videos, refresh_manifest, small_align_params, write_raw
from fixtures_data import write_fake_mirror

from cpsl.cli import main
from cpsl.data.mirror import check_csd_file
from cpsl.data.sources import dataset_spec
from cpsl.errors import PipelineError
from cpsl.formats import csd_safety
from cpsl.formats.csd import ComputationalSequence
from cpsl.formats.csd_vlen import payload_bytes
from cpsl.stages.align import run_align

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


@pytest.fixture(scope="module")
def params():
    return small_align_params()


def zeros_deflated(n: int, piece: int = 16 << 20) -> bytes:
    """A zlib stream of ``n`` zero bytes (a multiple of ``piece``) in a fraction of a second: after a full flush
    the compressor forgets its history, so every further piece compresses to the same bytes; the trailer is
    the adler32 of ``n`` zeros."""
    assert n % piece == 0
    z = zlib.compressobj(9)
    first = z.compress(bytes(piece)) + z.flush(zlib.Z_FULL_FLUSH)
    again = z.compress(bytes(piece)) + z.flush(zlib.Z_FULL_FLUSH)
    end = z.flush()
    return first + again * (n // piece - 1) + end[:-4] + (((n % 65521) << 16) | 1).to_bytes(4, "big")


def _take_features(h5: h5py.File, video: str) -> tuple[h5py.Group, int]:
    group = h5[video]
    rows = group["features"].shape[0]
    del group["features"]
    return group, rows


# (a) the case: a (rows, 5) float64 array (about 96 KB) whose one chunk is (32768, 6144) float64 = 1.5 GiB
# of gzip-compressed zeros (1.5 MB stored: within deflate's ratio, so the old checks let it through)
HUGE_CHUNK = (1 << 15, 6144)


def one_huge_chunk(h5, video):
    group, rows = _take_features(h5, video)
    ds = group.create_dataset("features", shape=(rows, 5), maxshape=(None, None), chunks=HUGE_CHUNK, dtype="f8",
                              compression="gzip")
    ds.id.write_direct_chunk((0, 0), zeros_deflated(prod_bytes(HUGE_CHUNK, 8)))
    return f"{video}/features"


def prod_bytes(shape, itemsize):
    return int(np.prod(shape)) * itemsize


# (b) every word entry points at the first entry's 1 MiB string (the file: 4 MiB, 3.7 GB once read)
SHARED_STRING = 1 << 20


def shared_vlen_words(h5, video):
    group, rows = _take_features(h5, video)
    words = [b"x" * SHARED_STRING] + [f"w{i}".encode() for i in range(1, rows)]
    ds = group.create_dataset("features", shape=(rows, 1), dtype=h5py.string_dtype("ascii"))
    ds[:, 0] = words
    return f"{video}/features", ds.id.get_offset(), rows


def point_all_at_the_first(path: Path, offset: int, rows: int) -> None:
    """Patch the file's bytes: copy the first entry's descriptor (length + global heap id) over the others."""
    with open(path, "r+b") as f:
        f.seek(offset)
        first = f.read(16)
        assert int.from_bytes(first[:4], "little") == SHARED_STRING  # really the descriptor: its length
        for i in range(1, rows):
            f.seek(offset + 16 * i)
            f.write(first)


def null_space(h5, video):
    group, _ = _take_features(h5, video)
    group.create_dataset("features", data=h5py.Empty("f8"))
    return f"{video}/features"


def scalar(h5, video):
    group, _ = _take_features(h5, video)
    group.create_dataset("features", data=1.5)
    return f"{video}/features"


def three_d(h5, video):
    group, rows = _take_features(h5, video)
    group.create_dataset("features", data=np.ones((rows, 5, 2)))
    return f"{video}/features"


def complex128(h5, video):
    group, rows = _take_features(h5, video)
    group.create_dataset("features", data=np.ones((rows, 5), complex))
    return f"{video}/features"


def strings(h5, video):
    group, rows = _take_features(h5, video)
    group.create_dataset("features", data=np.array([[b"1.0"] * 5] * rows))
    return f"{video}/features"


def three_d_intervals(h5, video):
    rows = h5[video]["intervals"].shape[0]
    del h5[video]["intervals"]
    h5[video].create_dataset("intervals", data=np.ones((rows, 2, 1)))
    return f"{video}/intervals"


# (e) case -> (how to build it, what the refusal says)
WRONG_ARRAYS = {
    "null dataspace": (null_space, "has a null dataspace (no shape, no elements); expected feature rows"),
    "scalar": (scalar, "has a scalar (no rows); expected feature rows"),
    "3-D": (three_d, "has shape (ROWS, 5, 2) (3-D); expected feature rows"),
    "complex128": (complex128, "has elements of type complex128; expected feature rows of real numbers"),
    "strings where numbers belong": (strings, "has strings; expected feature rows of real numbers"),
    "3-D intervals": (three_d_intervals, "has shape (ROWS, 2, 1) (3-D); expected time intervals"),
}


def _raw(tmp_path: Path, skip: dict | None = None) -> Path:
    return write_raw(tmp_path / "raw", make_videos(n_videos=4, seed=3), skip=skip)


def _assert_one_line_naming(message: str, file: Path | str, obj: str, fragment: str) -> None:
    assert "\n" not in message and "Traceback" not in message
    assert str(file) in message and f"HDF5 object '{obj}'" in message, message
    assert fragment in message, message


def _refused_by_align(tmp_path, params, raw: Path) -> str:
    with pytest.raises(PipelineError) as err:
        run_align(params, raw_dir=raw, out_path=tmp_path / "demo.h5")
    assert not (tmp_path / "demo.h5").exists()
    return str(err.value)


# ---------------------------------------------------------------- (a) one 1.5 GiB chunk

def _huge_chunk_raw(tmp_path: Path) -> tuple[Path, Path, str]:
    raw = _raw(tmp_path)
    file = raw / FILES["acoustic"]
    with h5py.File(file, "r+") as h5:
        obj = one_huge_chunk(h5, f"/{ROOTS['acoustic']}/data/vid01")
    refresh_manifest(raw)
    assert file.stat().st_size < 4 << 20  # a small file
    return raw, file, obj


def test_a_small_array_in_one_huge_chunk_is_refused_before_reading(tmp_path, params):
    raw, file, obj = _huge_chunk_raw(tmp_path)
    message = _refused_by_align(tmp_path, params, raw)
    _assert_one_line_naming(message, file, obj, "is stored in chunks of shape (32768, 6144) (1.5 GiB each, "
                                                "decompressed whole by any read), beyond the 64.0 MiB one chunk")
    with pytest.raises(PipelineError) as err:
        check_csd_file(file)
    _assert_one_line_naming(str(err.value), file, obj, "is stored in chunks of shape (32768, 6144)")


def test_chunks_spanning_more_than_the_array_budget_are_refused(tmp_path, monkeypatch):
    """Chunks under the per-chunk limit still count together: a read decompresses every chunk it spans."""
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as h5:
        ds = h5.create_dataset("x", shape=(64, 4), maxshape=(None, None), chunks=(16, 1024), dtype="f8",
                               compression="gzip")
        ds[...] = 1.0
    monkeypatch.setattr(csd_safety, "MAX_ARRAY_BYTES", 256 << 10)  # 4 chunks of 128 KiB decompress to 512 KiB
    with pytest.raises(csd_safety.NotSelfContainedError) as err:
        csd_safety.check_file(path)
    _assert_one_line_naming(str(err.value), path, "/x", "spans 4 chunks of shape (16, 1024): reading it "
                                                        "decompresses 0.5 MiB, beyond the 0.2 MiB")


def test_peak_memory_of_opening_and_reading_the_huge_chunk_file_stays_small(tmp_path):
    """Measured in a child process: reading the refused video must not decompress the 1.5 GiB chunk (the old
    reader's peak was 1.6 GB)."""
    raw, file, obj = _huge_chunk_raw(tmp_path)
    child = textwrap.dedent(f"""
        from cpsl.formats.csd import ComputationalSequence
        from cpsl.errors import PipelineError
        with ComputationalSequence({str(file)!r}) as seq:
            try:
                seq.read("vid01")
                print("read")
            except PipelineError as exc:
                print("refused", exc)
        # VmHWM: this process's own peak (ru_maxrss survives execve and would include the pytest parent's)
        print(next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:")) * 1024)
    """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    verdict, peak = out.stdout.strip().splitlines()
    assert verdict.startswith("refused") and obj in verdict, verdict
    assert int(peak) < 400 << 20, f"peak RSS {int(peak) / 2**20:.0f} MiB"


# ---------------------------------------------------------------- (b) word entries sharing one heap object

def _shared_words_raw(tmp_path: Path) -> tuple[Path, Path, str]:
    raw = _raw(tmp_path)
    file = raw / FILES["words"]
    with h5py.File(file, "r+") as h5:
        obj, offset, rows = shared_vlen_words(h5, f"/{ROOTS['words']}/data/vid01")
    point_all_at_the_first(file, offset, rows)
    refresh_manifest(raw)
    with h5py.File(file, "r") as h5:  # the patch took: HDF5 now reads the large string in every entry
        assert len(h5[obj][rows - 1, 0]) == SHARED_STRING
    return raw, file, obj


def test_word_entries_all_pointing_at_one_string_are_refused_before_reading(tmp_path, params, monkeypatch):
    raw, file, obj = _shared_words_raw(tmp_path)
    real_getitem = h5py.Dataset.__getitem__

    def guarded(self, key):  # the measurement: the refused array's elements are never materialised
        assert not (self.name == obj and Path(self.file.filename) == file), f"{obj} was read"
        return real_getitem(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", guarded)
    message = _refused_by_align(tmp_path, params, raw)
    with h5py.File(file, "r") as h5:
        rows = h5[obj].shape[0]
    _assert_one_line_naming(message, file, obj, f"has {rows} variable-length elements pointing at "
                                                f"{rows * SHARED_STRING} bytes together, more than the whole file")
    with pytest.raises(PipelineError) as err:
        check_csd_file(file)
    _assert_one_line_naming(str(err.value), file, obj, "elements sharing one heap object")


def test_variable_length_payload_is_counted_from_the_descriptors(tmp_path):
    """payload_bytes equals what h5py materialises, for the layouts h5py writes (contiguous, chunked with edge
    chunks, never written), and compact data, whose descriptors it cannot reach, is refused."""
    rng = np.random.default_rng(0)
    words = np.array([b"w" * int(n) for n in rng.integers(0, 40, size=59 * 17)], dtype=object)
    path = tmp_path / "v.h5"
    text = h5py.string_dtype("ascii")
    with h5py.File(path, "w") as h5:
        h5.create_dataset("contiguous", data=words.reshape(-1, 1), dtype=text)
        h5.create_dataset("chunked", data=words.reshape(59, 17), dtype=text, chunks=(10, 5), maxshape=(None, None))
        h5.create_dataset("unwritten", shape=(10, 1), dtype=text)
        h5.create_dataset("numbers", data=np.array([np.arange(n, dtype="f4") for n in (0, 3, 7)], dtype=object),
                          dtype=h5py.vlen_dtype("f4"))
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        compact = h5py.h5d.create(h5.id, b"compact", h5py.h5t.py_create(text, logical=True),
                                  h5py.h5s.create_simple((3,)), dcpl)
        h5py.Dataset(compact)[...] = [b"a", b"b", b"c"]
    with h5py.File(path, "r") as h5:
        for name in ("contiguous", "chunked", "unwritten"):
            materialised = sum(len(w) for w in h5[name][()].ravel())
            assert payload_bytes(h5[name].id, 1) == materialised, name
        assert payload_bytes(h5["numbers"].id, 4) == sum(a.nbytes for a in h5["numbers"][()])
        with pytest.raises(csd_safety.NotSelfContainedError, match="in the compact layout"):
            csd_safety.check_dataset(path, h5["compact"].id, "/compact", path.stat().st_size)


# ---------------------------------------------------------------- (c) videos hard-linked to one array

def _hard_linked_raw(tmp_path: Path) -> tuple[Path, Path]:
    aliases = ["vid01", "vid02", "vid03"]
    raw = _raw(tmp_path, skip={"acoustic": aliases})
    file = raw / FILES["acoustic"]
    with h5py.File(file, "r+") as h5:
        data = h5[f"{ROOTS['acoustic']}/data"]
        for vid in aliases:
            data[vid] = data["vid00"]  # a hard link: the same group (and arrays) under another video's name
    refresh_manifest(raw)
    return raw, file


def test_videos_hard_linked_to_one_array_count_once_per_name(tmp_path, params):
    raw, file = _hard_linked_raw(tmp_path)
    message = _refused_by_align(tmp_path, params, raw)
    assert "\n" not in message and str(file) in message, message
    assert "HDF5 object '/COVAREP/data/vid0" in message and "/COVAREP/data/vid00/" not in message, message
    assert f"more than the file holds ({file.stat().st_size}): data reached under several names" in message
    with pytest.raises(PipelineError) as err:
        check_csd_file(file)
    assert "data reached under several names (hard links)" in str(err.value)


def test_a_hard_link_cycle_is_refused_by_the_walk(tmp_path):
    """A group hard-linked inside itself: walked once per name, the walk ends at the depth limit."""
    raw = _raw(tmp_path)
    file = raw / FILES["visual"]
    with h5py.File(file, "r+") as h5:
        h5["FACET/metadata/loop"] = h5["FACET/metadata"]
    with pytest.raises(PipelineError) as err:
        check_csd_file(file)
    obj = "/FACET/metadata" + "/loop" * (csd_safety.MAX_DEPTH - 1)
    _assert_one_line_naming(str(err.value), file, obj, f"is a group nested {csd_safety.MAX_DEPTH + 1} levels deep")


def test_the_walk_stops_at_the_link_limit(tmp_path, monkeypatch):
    raw = _raw(tmp_path)
    monkeypatch.setattr(csd_safety, "MAX_LINKS", 10)
    with pytest.raises(PipelineError) as err:
        check_csd_file(raw / FILES["acoustic"])
    assert "has links beyond the 10 a raw file may have in all" in str(err.value)


# ---------------------------------------------------------------- (d) 20,000 nested groups

def test_twenty_thousand_nested_groups_are_refused_quickly_without_a_crash(tmp_path):
    """In a child process: the old walk (HDF5's recursive visitors) died of a segmentation fault here."""
    mirror = tmp_path / "mirror"
    write_fake_mirror(mirror, "mosi")
    file = mirror / dataset_spec("mosi").file("labels").name
    with h5py.File(file, "r+") as h5:
        group = h5[next(iter(h5.keys()))]
        root = group.name
        for _ in range(20_000):
            group = group.create_group("g")
    assert file.stat().st_size > 10 << 20
    child = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(TESTS)!r})
        from fixtures_data import make_params
        from cpsl.stages.prepare import run_prepare
        from cpsl.errors import PipelineError
        start = time.perf_counter()
        try:
            run_prepare(make_params("mosi", mirror={str(mirror)!r}), {str(tmp_path / "out")!r})
        except PipelineError as exc:
            print(exc)
            print(time.perf_counter() - start)
            sys.exit(1)
    """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 1, (out.returncode, out.stderr[-2000:])
    message, seconds = out.stdout.strip().splitlines()
    obj = root + "/g" * csd_safety.MAX_DEPTH  # the root group is level 1
    _assert_one_line_naming(message, f"mirror file {file}", obj,
                            f"is a group nested {csd_safety.MAX_DEPTH + 1} levels deep, beyond the "
                            f"{csd_safety.MAX_DEPTH} a raw file may have")
    assert float(seconds) < 10.0


# ---------------------------------------------------------------- (e) arrays of the wrong shape or type

def _wrong_array_raw(tmp_path: Path, case: str, video: str = "vid01") -> tuple[Path, Path, str]:
    raw = _raw(tmp_path)
    file = raw / FILES["acoustic"]
    with h5py.File(file, "r+") as h5:
        rows = h5[f"{ROOTS['acoustic']}/data/{video}/features"].shape[0]
        obj = WRONG_ARRAYS[case][0](h5, f"/{ROOTS['acoustic']}/data/{video}")
    refresh_manifest(raw)
    return raw, file, obj, WRONG_ARRAYS[case][1].replace("ROWS", str(rows))


@pytest.mark.parametrize("case", list(WRONG_ARRAYS))
def test_a_feature_array_of_the_wrong_shape_or_type_is_one_line(tmp_path, params, case):
    raw, file, obj, fragment = _wrong_array_raw(tmp_path, case)
    _assert_one_line_naming(_refused_by_align(tmp_path, params, raw), file, obj, fragment)


@pytest.mark.parametrize("case", ["null dataspace", "scalar", "3-D", "complex128"])
def test_prepare_refuses_a_wrong_array_in_the_videos_it_reads(tmp_path, case):
    raw, file, obj, fragment = _wrong_array_raw(tmp_path, case, video="vid00")
    with pytest.raises(PipelineError) as err:
        check_csd_file(file)
    _assert_one_line_naming(str(err.value), file, obj, fragment.replace("of real numbers", ""))


@pytest.mark.parametrize("case", ["null dataspace", "3-D"])
def test_the_feature_width_of_a_wrong_first_array_is_one_line(tmp_path, case):
    """prepare's summary reads the width from the first video's shape (a null dataspace has none)."""
    raw, file, obj, fragment = _wrong_array_raw(tmp_path, case, video="vid00")
    with ComputationalSequence(file) as seq, pytest.raises(PipelineError) as err:
        seq.feature_dim()
    _assert_one_line_naming(str(err.value), file, obj, fragment.replace("of real numbers", ""))


@pytest.mark.parametrize("case", ["complex128", "null dataspace"])
def test_cli_align_refusal_of_a_wrong_array_is_one_line_exit_1(tmp_path, capsys, case):
    raw, file, obj, fragment = _wrong_array_raw(tmp_path, case)
    code = main(["align", "--params", str(TESTS.parent / "params.yaml"), "--set", "data.max_seq_len=16",
                 "--raw", str(raw), "--out", str(tmp_path / "demo.h5")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith("cpsl align: error: "), err
    _assert_one_line_naming(err, file, obj, fragment)


def test_well_formed_files_pass_the_budgets_and_the_walk_is_fast(tmp_path, params):
    """The budgets refuse nothing genuine: a folder aligns, and prepare's walk over a file of 2,000 videos (6,000
    links) takes well under a second per thousand videos."""
    raw = _raw(tmp_path)
    for name in FILES.values():
        check_csd_file(raw / name)
    with ComputationalSequence(raw / FILES["words"]) as seq:
        assert all(len(seq.read_words(v)[1]) > 0 for v in seq.video_ids())
    run_align(params, raw_dir=raw, out_path=tmp_path / "demo.h5")
    many = tmp_path / "many.h5"
    with h5py.File(many, "w") as h5:
        for i in range(2000):
            group = h5.create_group(f"X/data/v{i:05d}")
            group["intervals"] = np.ones((3, 2))
            group["features"] = np.ones((3, 4), np.float32)
    start = time.perf_counter()
    csd_safety.check_file(many)
    assert time.perf_counter() - start < 10.0  # about 1 s under a load of 8 (old walk: the same)
