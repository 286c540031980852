"""A raw .csd file must not read the rest of the machine (issue 16, item 1).

Each hostile file is built with h5py: one video's array of a valid raw folder is replaced by an object whose data
would come from elsewhere (external raw storage pointing at a stand-in for /etc/passwd, an external link, a soft
link through an external link, a virtual dataset, a filter that needs a plugin) or would not fit (a gzip-chunked
array declaring 29.8 GiB in a small file, unwritten chunks). `cpsl align` must refuse each in one line naming
the file and the HDF5 object, before any of the foreign data reaches the cache; prepare refuses the same files
from a mirror or a download before they enter the raw folder; well-formed compressed files still pass.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from fixtures_align import FILES, ROOTS, make_videos, refresh_manifest, small_align_params, write_raw
from fixtures_data import LocalServer, make_params, write_fake_mirror

from cpsl.cli import main
from cpsl.data.mirror import check_csd_file
from cpsl.data.sources import dataset_spec
from cpsl.errors import PipelineError
from cpsl.formats import csd_safety
from cpsl.formats.cache import read_split
from cpsl.stages.align import run_align
from cpsl.stages.prepare import run_prepare

PASSWD = b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"


@pytest.fixture(scope="module")
def params():
    return small_align_params()


def _outside(tmp_path: Path) -> Path:
    """Files outside the project: a stand-in for /etc/passwd (an HDF5 file for the links is made per case)."""
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "passwd").write_bytes(PASSWD * 20)
    return outside


def _other_h5(outside: Path, rows: int) -> Path:
    """An HDF5 file outside the project with an array shaped like the video's frames (so that, without the
    checks, align accepts it and caches its values)."""
    with h5py.File(outside / "other.h5", "w") as h5:
        h5["feat"] = np.full((rows, 5), 7.0, np.float32)
    return outside / "other.h5"


def _take_features(h5: h5py.File, video: str) -> tuple[h5py.Group, int]:
    """Remove ``video``'s features (its group stays); return the group and the number of rows it had."""
    group = h5[video]
    rows = group["features"].shape[0]
    del group["features"]
    return group, rows


# Each builder replaces one video's array (or the video itself) of the open file and returns the HDF5 path of the
# hostile object. The foreign arrays have the right number of rows: without the checks align accepts them.
def external_storage(h5, video, outside):  # the word stream read from "/etc/passwd"
    group, rows = _take_features(h5, video)
    group.create_dataset("features", shape=(rows, 1), dtype="S13",
                         external=[(str(outside / "passwd"), 0, h5py.h5f.UNLIMITED)])
    return f"{video}/features"


def external_link(h5, video, outside):
    group, rows = _take_features(h5, video)
    group["features"] = h5py.ExternalLink(str(_other_h5(outside, rows)), "/feat")
    return f"{video}/features"


def soft_link_out(h5, video, outside):  # a soft link whose target goes through an external link: it leaves the file
    group, rows = _take_features(h5, video)
    h5["COVAREP/door"] = h5py.ExternalLink(str(_other_h5(outside, rows)), "/")
    group["features"] = h5py.SoftLink("/COVAREP/door/feat")
    return f"{video}/features"


def soft_link_alias(h5, video, outside):  # the whole video aliased to another one's frames and intervals
    del h5[video]
    h5[video] = h5py.SoftLink("/COVAREP/data/vid00")
    return video


def virtual_dataset(h5, video, outside):
    group, rows = _take_features(h5, video)
    layout = h5py.VirtualLayout(shape=(rows, 5), dtype="f4")
    layout[:] = h5py.VirtualSource(str(_other_h5(outside, rows)), "feat", shape=(rows, 5))
    group.create_virtual_dataset("features", layout)
    return f"{video}/features"


def gzip_bomb(h5, video, outside):  # the case: (200000, 20000) float64 declared, nothing stored
    group, _ = _take_features(h5, video)
    group.create_dataset("features", shape=(200000, 20000), dtype="f8", chunks=(1000, 1000), compression="gzip")
    return f"{video}/features"


def unwritten_chunks(h5, video, outside):  # 32 MB declared (under the memory budget), nothing stored
    group, _ = _take_features(h5, video)
    group.create_dataset("features", shape=(2000, 2000), dtype="f8", chunks=(500, 500), compression="gzip")
    return f"{video}/features"


def plugin_filter(h5, video, outside):  # filter 32015 (zstd) needs a plugin; h5py writes it as an optional filter
    group, rows = _take_features(h5, video)
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk((rows, 5))
    dcpl.set_filter(32015, h5py.h5z.FLAG_OPTIONAL, ())
    h5py.h5d.create(group.id, b"features", h5py.h5t.NATIVE_FLOAT, h5py.h5s.create_simple((rows, 5)), dcpl=dcpl)
    group["features"][...] = np.ones((rows, 5), np.float32)
    return f"{video}/features"


# case -> (the file it is in, how to build it, what the refusal says)
HOSTILE = {
    "external storage": ("words", external_storage, "stores its data in an external file"),
    "external link": ("acoustic", external_link, "is an external link to"),
    "soft link out of the file": ("acoustic", soft_link_out, "is a soft link to '/COVAREP/door/feat'"),
    "soft link alias": ("acoustic", soft_link_alias, "is a soft link to '/COVAREP/data/vid00'"),
    "virtual dataset": ("acoustic", virtual_dataset, "is a virtual dataset mapping data from"),
    "gzip bomb": ("acoustic", gzip_bomb, "declares shape (200000, 20000) (29.8 GiB), beyond the 1.0 GiB"),
    "unwritten chunks": ("acoustic", unwritten_chunks,
                         "but stores 0 bytes, more than its filters can expand them to (1032x)"),
    "plugin filter": ("acoustic", plugin_filter, "needs HDF5 filter 32015"),
}


def _hostile_raw(tmp_path: Path, case: str) -> tuple[Path, Path, str]:
    raw = write_raw(tmp_path / "raw", make_videos(n_videos=4, seed=3))
    role, build, _ = HOSTILE[case]
    with h5py.File(raw / FILES[role], "r+") as h5:
        obj = build(h5, f"/{ROOTS[role]}/data/vid01", _outside(tmp_path))
    refresh_manifest(raw)  # the manifest vouches for the hostile file: its sha256 covers only the .csd
    return raw, raw / FILES[role], obj


def _assert_one_line_naming(message: str, file: Path | str, obj: str, fragment: str) -> None:
    assert "\n" not in message
    assert str(file) in message and f"HDF5 object '{obj}'" in message, message
    assert fragment in message, message


@pytest.mark.parametrize("case", list(HOSTILE))
def test_align_refuses_a_hostile_raw_file_before_reading_it(tmp_path, params, case):
    raw, file, obj = _hostile_raw(tmp_path, case)
    with pytest.raises(PipelineError) as err:
        run_align(params, raw_dir=raw, out_path=tmp_path / "demo.h5")
    _assert_one_line_naming(str(err.value), file, obj, HOSTILE[case][2])
    assert not (tmp_path / "demo.h5").exists()


@pytest.mark.parametrize("case", ["external storage", "gzip bomb"])
def test_cli_align_refusal_is_one_line_exit_1(tmp_path, capsys, case):
    raw, file, obj = _hostile_raw(tmp_path, case)
    code = main(["align", "--params", str(Path(__file__).resolve().parents[1] / "params.yaml"),
                 "--set", "data.max_seq_len=16", "--raw", str(raw), "--out", str(tmp_path / "demo.h5")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith("cpsl align: error: ")
    _assert_one_line_naming(err, file, obj, HOSTILE[case][2])
    assert "root:x" not in err and not (tmp_path / "demo.h5").exists()


@pytest.mark.parametrize("case", list(HOSTILE))
def test_prepare_refuses_the_file_from_a_mirror(tmp_path, case):
    raw, file, obj = _hostile_raw(tmp_path, case)
    mirror = tmp_path / "mirror"
    write_fake_mirror(mirror, "mosi")
    role = next(r for r, name in FILES.items() if name == file.name)
    target = mirror / dataset_spec("mosi").file(role).name
    shutil.copy(file, target)
    out = tmp_path / "prepared"
    with pytest.raises(PipelineError) as err:
        run_prepare(make_params("mosi", mirror=str(mirror)), out)
    _assert_one_line_naming(str(err.value), f"mirror file {target}", obj, HOSTILE[case][2])
    assert not out.exists() or not any(out.iterdir())  # nothing was copied


def test_download_of_a_hostile_file_is_refused_and_not_kept(tmp_path):
    raw, file, obj = _hostile_raw(tmp_path, "external link")
    dest = tmp_path / "dl" / "X_COVAREP.csd"
    with LocalServer({"/X_COVAREP.csd": file.read_bytes()}) as srv:
        from cpsl.data.download import download_file

        url = srv.url("/X_COVAREP.csd")
        with pytest.raises(PipelineError) as err:
            download_file(url, dest, retries=3, backoff_s=0.01, timeout_s=5.0, progress=False,
                          verify=lambda tmp: check_csd_file(tmp, shown_as=f"{dest.name} (downloaded from {url})"))
        assert srv.hits["/X_COVAREP.csd"] == 1  # the server would send the same bytes again: not retried
    _assert_one_line_naming(str(err.value), f"X_COVAREP.csd (downloaded from {url})", obj, "external link")
    assert not list(dest.parent.iterdir())


def test_a_hostile_object_anywhere_in_the_file_is_refused_by_prepare(tmp_path):
    """prepare walks the whole file: an external link the reader would never traverse is refused too."""
    raw = write_raw(tmp_path / "raw", make_videos(n_videos=4, seed=3))
    with h5py.File(raw / FILES["visual"], "r+") as h5:
        h5["FACET/metadata/extra"] = h5py.ExternalLink(str(_outside(tmp_path) / "other.h5"), "/feat")
    with pytest.raises(PipelineError) as err:
        check_csd_file(raw / FILES["visual"])
    _assert_one_line_naming(str(err.value), raw / FILES["visual"], "/FACET/metadata/extra", "is an external link")


def test_well_formed_compressed_files_are_accepted(tmp_path, params):
    """The checks refuse what they should and nothing else: gzip, shuffle, fletcher32 and lzf, and an all-zero
    array at deflate's full 1000:1 ratio, align as before (values equal to the uncompressed file's)."""
    videos = make_videos(n_videos=4, seed=3)
    iv, feats = videos["vid01"]["visual"]
    feats[:] = 0.0  # no face found: an all-zero array compresses about 1000:1
    plain = write_raw(tmp_path / "plain", videos)
    packed = write_raw(tmp_path / "packed", videos)
    for role, opts in (("acoustic", {"compression": "gzip", "compression_opts": 9, "shuffle": True,
                                     "fletcher32": True}), ("visual", {"compression": "lzf"})):
        with h5py.File(packed / FILES[role], "r+") as h5:
            for vid in videos:
                group = h5[f"{ROOTS[role]}/data/{vid}"]
                data = group["features"][()]
                del group["features"]
                group.create_dataset("features", data=data, chunks=True, **opts)
    with h5py.File(packed / FILES["visual"], "r+") as h5:  # a large zero array at deflate's ratio (walked by prepare)
        big = h5["FACET/data/vid03"].create_dataset("zeros", data=np.zeros((4000, 2000)), chunks=(1000, 2000),
                                                    compression="gzip", compression_opts=9)
        assert big.id.get_storage_size() * 1000 < big.size * 8  # really ~1000:1
    refresh_manifest(packed)
    for name in FILES.values():
        check_csd_file(packed / name)
    a = run_align(params, raw_dir=plain, out_path=tmp_path / "plain.h5")
    b = run_align(params, raw_dir=packed, out_path=tmp_path / "packed.h5")
    assert a["segments"] == b["segments"]
    for split in ("train", "valid", "test"):
        x, y = read_split(tmp_path / "plain.h5", split), read_split(tmp_path / "packed.h5", split)
        for key in ("acoustic", "visual", "input_ids"):
            np.testing.assert_array_equal(x[key], y[key])


class _Forged:
    """A dataset id whose chunk records claim more bytes than the file holds (h5py cannot write one)."""

    def __init__(self, real, stored: int):
        self._real, self._stored = real, stored
        self.shape = real.shape

    def get_create_plist(self):
        return self._real.get_create_plist()

    def get_space(self):
        return self._real.get_space()

    def get_type(self):
        return self._real.get_type()

    def get_storage_size(self):
        return self._stored


def test_a_dataset_claiming_more_stored_bytes_than_the_file_is_refused(tmp_path):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("x", data=np.ones((100, 4)), chunks=(10, 4), compression="gzip")
    size = path.stat().st_size
    with h5py.File(path, "r") as h5:
        assert csd_safety.check_dataset(path, h5["x"].id, "/x", size) > 0
        with pytest.raises(csd_safety.NotSelfContainedError, match="more than the whole file"):
            csd_safety.check_dataset(path, _Forged(h5["x"].id, size + 1), "/x", size)


def test_the_memory_budget_is_enforced_below_the_ratio_bound(tmp_path, monkeypatch):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("x", data=np.random.default_rng(0).normal(size=(512, 512)))  # 2 MiB, stored in full
    monkeypatch.setattr(csd_safety, "MAX_ARRAY_BYTES", 1 << 20)
    with pytest.raises(csd_safety.NotSelfContainedError, match=r"beyond the 1.0 MiB one raw array may take"):
        csd_safety.check_file(path)
