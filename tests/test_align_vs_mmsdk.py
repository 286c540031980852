"""Our word-level alignment equals mmsdk's real ``align('words', collapse_functions=[avg])`` and its
second alignment to the label intervals, on a fixture full of edge cases."""
from __future__ import annotations

import contextlib
import io
import os
import warnings

import numpy as np
import pytest
from fixtures_align import FILES, add_edge_cases, make_videos, write_raw

from cpsl.align.word_align import frame_means, intersecting_runs, reference_kept, segment_members

os.environ.setdefault("TQDM_DISABLE", "1")  # mmsdk draws progress bars
mmdatasdk = pytest.importorskip("mmsdk.mmdatasdk")


def sdk_avg(intervals, features):
    # the SDK's tutorial collapse; the word stream itself (bytes) cannot be averaged and is kept as is
    try:
        return np.average(features, axis=0)
    except TypeError:
        return features


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    videos = make_videos(n_videos=3, seed=3)
    videos["vid01"] = add_edge_cases(videos["vid01"])
    return videos, write_raw(tmp_path_factory.mktemp("raw"), videos)


@pytest.fixture(scope="module")
def sdk(raw):
    _, raw_dir = raw
    recipe = {role: str(raw_dir / FILES[role]) for role in ("words", "acoustic", "visual")}
    # the SDK logs every step to stdout and numpy warns on its nan means
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ds = mmdatasdk.mmdataset(recipe)
        ds.align("words", collapse_functions=[sdk_avg])
        word_level = {role: {k: {"features": np.array(v["features"]), "intervals": np.array(v["intervals"])}
                             for k, v in ds[role].data.items()} for role in ("words", "acoustic", "visual")}
        # (ds.impute is broken on Python 3 in mmsdk 0.0.6; it only adds zero entries, checked above as counts == 0)
        ds.add_computational_sequences({"labels": str(raw_dir / FILES["labels"])}, destination=None)
        ds.align("labels")
        segment_words = {k: [w[0].decode() for w in np.array(v["features"])] for k, v in ds["words"].data.items()}
    return word_level, segment_words


@pytest.mark.parametrize("role", ["acoustic", "visual"])
def test_word_values_equal_sdk_for_every_word(raw, sdk, role):
    videos, _ = raw
    word_level, _ = sdk
    checked = nonfinite = 0
    for vid, video in videos.items():
        word_iv = video["words"][0]
        frame_iv, feats = video[role]
        means, counts = frame_means(frame_iv, feats, word_iv)
        kept = reference_kept(word_iv)
        for i in range(len(word_iv)):
            key = f"{vid}[{i}]"
            assert (key in word_level["words"]) == bool(kept[i]), key
            if not kept[i]:
                continue
            if key not in word_level[role]:  # no intersecting frame: the SDK has no entry
                assert counts[i] == 0, key
                continue
            expected = word_level[role][key]["features"].reshape(-1)
            # before replacement: same -inf / +inf / nan pattern and same finite values
            np.testing.assert_allclose(means[i], expected, rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=key)
            nonfinite += int((~np.isfinite(expected)).sum())
            # after the same non-finite -> 0 replacement
            np.testing.assert_allclose(np.nan_to_num(means[i], nan=0, posinf=0, neginf=0),
                                       np.nan_to_num(expected, nan=0, posinf=0, neginf=0), rtol=1e-5, atol=1e-6)
            checked += 1
    assert checked > 50
    if role == "acoustic":
        assert nonfinite > 0  # the fixture must exercise the -inf/nan path


def test_fixture_has_edge_cases(raw, sdk):
    videos, _ = raw
    word_level, _ = sdk
    word_iv = videos["vid01"]["words"][0]
    assert not reference_kept(word_iv).all()                   # a skipped zero-length word
    assert intersecting_runs(videos["vid01"]["acoustic"][0], word_iv) is not None  # fast path
    assert intersecting_runs(videos["vid01"]["visual"][0], word_iv) is None        # exact fallback
    no_visual = [k for k in word_level["words"] if k not in word_level["visual"]]
    assert no_visual                                           # a word with no visual frame


def test_segment_membership_equals_sdk(raw, sdk):
    videos, _ = raw
    _, segment_words = sdk
    compared = 0
    for vid, video in videos.items():
        word_iv, word_feats = video["words"]
        kept = np.flatnonzero(reference_kept(word_iv))
        words = [word_feats[i, 0].decode() for i in kept]
        members = segment_members(word_iv[kept], video["labels"][0])
        for k, idx in enumerate(members):
            key = f"{vid}[{k}]"
            if len(idx) == 0:
                assert key not in segment_words, key
                continue
            assert [words[i] for i in idx] == segment_words[key], key
            compared += 1
    assert compared >= 8
    crossing = [k for k, ws in segment_words.items() if "across" in ws]
    assert len(crossing) == 2  # a word across a segment boundary belongs to both segments
