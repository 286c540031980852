"""The align stage end to end on small fixtures, and its bad-input cases."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from fixtures_align import (
    ACOUSTIC_DIM,
    FILES,
    ROOTS,
    VISUAL_DIM,
    add_edge_cases,
    make_videos,
    refresh_manifest,
    small_align_params,
    write_raw,
)

from cpsl.align.subwords import load_tokenizer
from cpsl.align.word_align import frame_means, reference_kept, replace_nonfinite, segment_members
from cpsl.formats.cache import read_attrs, read_split
from cpsl.formats.csd import CSDError
from cpsl.formats.raw_folder import RawFolderError
from cpsl.stages.align import AlignError, report_path_for, run_align

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def params():
    return small_align_params()


def _videos():
    videos = make_videos(n_videos=6, seed=5)
    videos["vid01"] = add_edge_cases(videos["vid01"])
    return videos


@pytest.fixture(scope="module")
def built(tmp_path_factory, params):
    root = tmp_path_factory.mktemp("stage")
    videos = _videos()
    videos["extra"] = make_videos(1, seed=9)["vid00"]  # in the files, not in the folds
    folds = {"train": ["vid00", "vid01", "vid02", "vid03"], "valid": ["vid04"], "test": ["vid05", "ghost"]}
    raw = write_raw(root / "raw", videos, folds=folds, skip={"visual": ["vid03"]})
    report = run_align(params, raw_dir=raw, out_path=root / "out" / "demo.h5")
    return videos, raw, root / "out" / "demo.h5", report


def test_cache_contents_match_word_level_alignment(built, params):
    videos, raw, cache, report = built
    tok = load_tokenizer(params["demo"]["text_model"])
    train = read_split(cache, "train")
    assert train["acoustic"].shape[1:] == (16, ACOUSTIC_DIM) and train["visual"].shape[2] == VISUAL_DIM
    checked = 0
    for row, seg_id in enumerate(train["segment_id"]):
        vid, k = seg_id[:-1].split("[")
        video = videos[vid]
        w_iv, w = video["words"]
        kept = np.flatnonzero(reference_kept(w_iv))
        members = segment_members(w_iv[kept], video["labels"][0])[int(k)]
        words = [w[kept[i], 0].decode() for i in members if w[kept[i], 0] != b"sp"]
        idx = [kept[i] for i in members if w[kept[i], 0] != b"sp"]
        means, _ = frame_means(*video["acoustic"], w_iv[idx])
        replace_nonfinite(means)
        ids, word_ids = tok.encode([words])[0]
        n = min(len(ids), 14)
        assert train["input_ids"][row, 1:n + 1].tolist() == list(ids[:n])
        np.testing.assert_allclose(train["acoustic"][row, 1:n + 1], means[word_ids[:n]], rtol=1e-6)
        assert train["label"][row] == pytest.approx(video["labels"][1][int(k), 0])
        checked += 1
    assert checked == report["segments"]["train"] > 5
    assert not any(sid.startswith("vid03") for sid in train["segment_id"])
    assert all(np.isfinite(read_split(cache, s)["acoustic"]).all() for s in ("train", "valid", "test"))


def test_report_lists_drops_skips_and_replacements(built):
    videos, raw, cache, report = built
    saved = json.loads(report_path_for(cache).read_text())
    assert saved["segments"] == report["segments"]
    assert {"video": "vid03", "split": "train", "missing_from": ["visual"]} in saved["videos_skipped"]
    assert any(v["video"] == "ghost" for v in saved["videos_skipped"])
    assert saved["videos_not_in_folds"] == ["extra"]
    n_seg_vid01 = len(videos["vid01"]["labels"][0])
    assert saved["segments_dropped"] == [{"segment": f"vid01[{n_seg_vid01 - 1}]", "split": "train",
                                          "reason": "no words in segment (after dropping 'sp')"}]
    assert saved["nonfinite_replaced"]["acoustic"] > 0
    assert saved["words_without_frames"]["visual"] >= 1
    attrs = read_attrs(cache)
    manifest = json.loads((raw / "manifest.json").read_text())
    assert attrs["raw_manifest_sha256"] == {r: e["sha256"] for r, e in manifest["files"].items()}
    assert (attrs["acoustic_name"], attrs["visual_name"], attrs["max_seq_len"]) == ("COVAREP", "FACET", 16)


# ---------------------------------------------------------------- bad input

@pytest.fixture()
def raw(tmp_path):
    return write_raw(tmp_path / "raw", make_videos(n_videos=4, seed=1))


def _fails(params, raw, out, exc, pattern):
    with pytest.raises(exc, match=pattern):
        run_align(params, raw_dir=raw, out_path=out)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []  # no cache, no temp file


def test_changed_file_is_refused_and_previous_cache_kept(params, raw, tmp_path):
    out = tmp_path / "out" / "demo.h5"
    run_align(params, raw_dir=raw, out_path=out)
    before = out.read_bytes()
    with h5py.File(raw / FILES["labels"], "a") as h5:
        h5[f"{ROOTS['labels']}/data/vid00/features"][0, 0] = 2.5
    with pytest.raises(RawFolderError, match=rf"{FILES['labels']}: file changed since `cpsl prepare`"):
        run_align(params, raw_dir=raw, out_path=out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["demo.h5", "demo.report.json"]


def test_missing_file(params, raw, tmp_path):
    (raw / FILES["visual"]).unlink()
    _fails(params, raw, tmp_path / "o" / "demo.h5", RawFolderError, rf"{FILES['visual']}: file listed .* is missing")


def test_truncated_csd(params, raw, tmp_path):
    path = raw / FILES["acoustic"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    refresh_manifest(raw)
    _fails(params, raw, tmp_path / "o" / "demo.h5", CSDError, FILES["acoustic"])


def test_label_outside_range_names_segment(params, tmp_path):
    videos = make_videos(n_videos=4, seed=1)
    videos["vid02"]["labels"][1][1, 0] = 3.5
    raw = write_raw(tmp_path / "raw", videos)
    _fails(params, raw, tmp_path / "o" / "demo.h5", AlignError, r"segment 'vid02\[1\]' has label 3.5")


def test_feature_width_mismatch_names_file_and_video(params, tmp_path):
    videos = make_videos(n_videos=4, seed=1)
    iv, f = videos["vid02"]["visual"]
    videos["vid02"]["visual"] = (iv, np.hstack([f, f[:, :1]]))
    raw = write_raw(tmp_path / "raw", videos)
    _fails(params, raw, tmp_path / "o" / "demo.h5", AlignError,
           rf"{FILES['visual']}: video 'vid02' has visual features of width {VISUAL_DIM + 1}")


def test_bad_folds_and_manifest(params, raw, tmp_path):
    (raw / "folds.json").write_text(json.dumps({"train": ["vid00"], "valid": ["vid00"], "test": []}))
    _fails(params, raw, tmp_path / "o" / "demo.h5", RawFolderError, r"folds.json: video 'vid00' is in both")
    (raw / "manifest.json").write_text("{not json")
    _fails(params, raw, tmp_path / "o" / "demo.h5", RawFolderError, r"manifest.json: manifest is not valid JSON")

