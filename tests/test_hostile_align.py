"""Hostile raw files for `cpsl align` (issue 10, cases 3-4, 8): a video with no frames, values beyond float32,
a numeric or non-UTF-8 word stream, and the temporaries a SIGKILLed align leaves; (issue 16, item 5) invalid video
ids and reversed frame intervals."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures_align import FILES, make_videos, small_align_params, write_raw

from cpsl.align.word_align import frame_means, segment_members
from cpsl.formats.cache import read_split
from cpsl.formats.csd import CSDError
from cpsl.formats.raw_folder import RawFolderError
from cpsl.stages.align import AlignError, run_align

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def params():
    return small_align_params()


def _videos():
    return make_videos(n_videos=4, seed=3)


def test_no_frames_at_all_gives_zero_runs_not_an_index_error():
    words = np.array([[0.0, 0.5], [0.5, 1.0]])
    means, counts = frame_means(np.zeros((0, 2)), np.zeros((0, 3), np.float32), words)
    assert counts.tolist() == [0, 0] and means.shape == (2, 3) and not means.any()
    assert [m.tolist() for m in segment_members(np.zeros((0, 2)), np.array([[0.0, 1.0]]))] == [[]]


def test_video_with_zero_frames_aligns_with_zero_vectors_and_is_counted(tmp_path, params):
    videos = _videos()
    n_words = int((videos["vid01"]["words"][1][:, 0] != b"sp").sum())
    videos["vid01"]["visual"] = (np.zeros((0, 2)), np.zeros((0, videos["vid01"]["visual"][1].shape[1]), np.float32))
    raw = write_raw(tmp_path / "raw", videos)
    report = run_align(params, raw_dir=raw, out_path=tmp_path / "demo.h5")
    assert report["words_without_frames"]["visual"] >= n_words
    rows = [i for i, s in enumerate(read_split(tmp_path / "demo.h5", "train")["segment_id"]) if s.startswith("vid01")]
    assert rows and not read_split(tmp_path / "demo.h5", "train")["visual"][rows].any()


def test_values_beyond_float32_are_replaced_and_reported_truthfully(tmp_path, params, capsys):
    videos = _videos()
    iv, feats = videos["vid00"]["visual"]
    feats = feats.astype(np.float64)
    feats[5:40, 1] = 1e300  # finite in float64, inf in float32
    feats[50:60, 2] = -1e300
    videos["vid00"]["visual"] = (iv, feats)
    raw = write_raw(tmp_path / "raw", videos)
    report = run_align(params, raw_dir=raw, out_path=tmp_path / "demo.h5")
    assert report["float32_overflow_replaced"]["visual"] > 0
    assert report["float32_overflow_replaced"].get("acoustic", 0) == 0
    assert "values beyond float32 range replaced by 0: acoustic 0, visual " in capsys.readouterr().out
    for split in ("train", "valid", "test"):
        assert np.isfinite(read_split(tmp_path / "demo.h5", split)["visual"]).all()


def _numeric_words(videos):
    iv, _ = videos["vid02"]["words"]
    videos["vid02"]["words"] = (iv, np.arange(len(iv), dtype=np.float64)[:, None])


def _latin1_word(videos):
    iv, words = videos["vid02"]["words"]
    words = words.astype(object)
    words[3, 0] = "caf\xe9".encode("latin-1")
    videos["vid02"]["words"] = (iv, words.astype("S"))


@pytest.mark.parametrize("damage, fragment", [
    (_numeric_words, "video 'vid02' has numeric features (float64), not words"),
    (_latin1_word, "video 'vid02' word 3 is not valid UTF-8 (b'caf\\xe9'"),
])
def test_bad_word_streams_are_errors_naming_file_and_video(tmp_path, params, damage, fragment):
    videos = _videos()
    damage(videos)
    raw = write_raw(tmp_path / "raw", videos)
    with pytest.raises(CSDError) as err:
        run_align(params, raw_dir=raw, out_path=tmp_path / "demo.h5")
    assert fragment in str(err.value) and "TEST_TimestampedWords.csd" in str(err.value)
    assert not (tmp_path / "demo.h5").exists()


def test_rerun_removes_temporaries_a_killed_align_left(tmp_path, params):
    raw = write_raw(tmp_path / "raw", _videos())
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / ".demo.h5.ab12cd34.h5.tmp", out / ".demo.report.json.zz11yy22.tmp"]
    foreign = [out / ".other.h5.ab12cd34.h5.tmp", out / "demo.h5.bak"]
    for p in stale + foreign:
        p.write_bytes(b"x" * 64)
    run_align(params, raw_dir=raw, out_path=out / "demo.h5")
    assert not [p for p in stale if p.exists()]
    assert all(p.exists() for p in foreign)


# ---------------------------------------------------------------- issue 16, item 5: ids and reversed intervals
def _renamed(videos: dict, old: str, new: str) -> dict:
    return {new if vid == old else vid: video for vid, video in videos.items()}


@pytest.mark.parametrize("bad_id, fragment", [
    ("vid/01", "contains '/' (HDF5 reads it as a path of nested groups)"),
    ("vid\x0701", "contains the control character U+0007"),
    ("v" * 300, "is 300 characters long (at most 128)"),
], ids=["slash", "control", "long"])
def test_invalid_video_ids_are_refused_naming_the_folds_file(tmp_path, params, bad_id, fragment):
    raw = write_raw(tmp_path / "raw", _renamed(_videos(), "vid01", bad_id))  # in every file and in folds.json
    with pytest.raises(RawFolderError) as err:
        run_align(params, raw_dir=raw, out_path=tmp_path / "demo.h5")
    msg = str(err.value)
    assert str(raw / "folds.json") in msg and "(split '" in msg and fragment in msg and "\n" not in msg
    assert not (tmp_path / "demo.h5").exists()


def test_an_invalid_id_in_a_raw_file_alone_is_refused_naming_that_file(tmp_path, params):
    videos = _videos()
    raw = write_raw(tmp_path / "raw", {**videos, "odd\u2028id": videos["vid01"]},
                    folds={"train": ["vid00", "vid01"], "valid": ["vid02"], "test": ["vid03"]})
    with pytest.raises(AlignError) as err:
        run_align(params, raw_dir=raw, out_path=tmp_path / "demo.h5")
    assert "TEST_" in str(err.value) and "'odd\\u2028id' contains the control character U+2028" in str(err.value)


@pytest.mark.parametrize("role", ["acoustic", "visual"])
def test_a_reversed_frame_interval_is_an_error_naming_file_video_and_row(tmp_path, params, role):
    videos = _videos()
    iv, feats = videos["vid01"][role]
    iv = iv.copy()
    iv[12] = iv[12][::-1] + [0.0, -0.05]  # ends before it starts
    videos["vid01"][role] = (iv, feats)
    raw = write_raw(tmp_path / "raw", videos)
    with pytest.raises(AlignError) as err:
        run_align(params, raw_dir=raw, out_path=tmp_path / "demo.h5")
    msg = str(err.value)
    assert FILES[role] in msg and "video 'vid01' frame 12 (row 12 of its intervals) ends before it starts" in msg
    assert not (tmp_path / "demo.h5").exists()
