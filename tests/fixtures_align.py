"""Small raw folders in the CMU layout for the align tests (independent of the prepare stage).

``make_videos`` draws a deterministic dataset with the features real MOSI has: ``sp`` silence tokens,
100 Hz acoustic frames with some -inf values, 30 Hz visual frames with a gap, labels in [-3, 3].
``add_edge_cases`` plants the cases where alignment is easy to get wrong (zero-length and eps-length
words, words crossing segment boundaries, frames ending exactly eps after a word starts, nan/+inf
frames, an empty segment). ``write_raw`` writes the four .csd files, folds.json and manifest.json.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cpsl.formats.csd import write_csd
from cpsl.runtime.io_utils import sha256_file

ACOUSTIC_DIM, VISUAL_DIM = 5, 4
FILES = {"words": "TEST_TimestampedWords.csd", "acoustic": "TEST_COVAREP.csd",
         "visual": "TEST_FACET.csd", "labels": "TEST_Labels.csd"}
ROOTS = {"words": "TimestampedWords", "acoustic": "COVAREP", "visual": "FACET", "labels": "Labels"}
VOCAB = ["good", "bad", "movie", "really", "the", "acting", "was", "unbelievably", "boring", "great"]


def metadata(role: str) -> dict:
    return {
        "computational sequence description": f"test {role}", "computational sequence version": "1.0",
        "alignment compatible": "True", "dataset name": "TEST", "dataset version": "1.0",
        "creator": "tests", "contact": "tests@example.org", "featureset bib citation": "none",
        "dataset bib citation": "none",
    }


def _frames(duration: float, rate: float, dim: int, rng) -> tuple[np.ndarray, np.ndarray]:
    starts = np.arange(0.0, duration, 1.0 / rate)
    iv = np.stack([starts, starts + 1.0 / rate], axis=1)
    return iv, rng.normal(size=(len(starts), dim)).astype(np.float32)


def make_video(rng, n_segments: int) -> dict:
    """One video: role -> (intervals, features)."""
    t, word_iv, words, seg_iv = 0.3, [], [], []
    for _ in range(n_segments):
        seg_start = t
        for _ in range(int(rng.integers(3, 9))):
            if rng.random() < 0.25:  # silence token between words, as in MOSI's word stream
                d = float(rng.uniform(0.05, 0.3))
                word_iv.append((t, t + d))
                words.append("sp")
                t += d
            d = float(rng.uniform(0.15, 0.6))
            word_iv.append((t, t + d))
            words.append(str(rng.choice(VOCAB)))
            t += d
        seg_iv.append((seg_start, t))
        t += float(rng.uniform(0.0, 0.4))
    duration = t + 0.5
    a_iv, a = _frames(duration, 100.0, ACOUSTIC_DIM, rng)
    a[rng.random(a.shape[0]) < 0.02, 0] = -np.inf  # COVAREP has -inf in some columns
    v_iv, v = _frames(duration, 30.0, VISUAL_DIM, rng)
    labels = rng.uniform(-3, 3, size=(len(seg_iv), 1)).astype(np.float32)
    return {
        "words": (np.array(word_iv), np.array([[w.encode()] for w in words])),
        "acoustic": (a_iv, a), "visual": (v_iv, v), "labels": (np.array(seg_iv), labels),
    }


def make_videos(n_videos: int = 6, seed: int = 0, min_segments: int = 2, max_segments: int = 4) -> dict:
    rng = np.random.default_rng(seed)
    return {f"vid{i:02d}": make_video(rng, int(rng.integers(min_segments, max_segments + 1))) for i in range(n_videos)}


def add_edge_cases(video: dict) -> dict:
    """Return a copy of ``video`` with the tricky cases appended after its last segment; its visual
    frames include one long overlapping window, so they take the brute-force path."""
    out = {role: (iv.copy(), f.copy()) for role, (iv, f) in video.items()}
    w_iv, w = out["words"]
    t = float(np.ceil(w_iv[-1, 1])) + 1.0
    extra = [
        ((t, t), b"zero"),                       # zero-length word: the SDK skips it
        ((t + 0.01, t + 0.011), b"tiny"),        # exactly eps long (within float error)
        ((t + 0.02, t + 0.45), b"edge"),         # starts mid-frame
        ((t + 0.45, t + 0.9), b"across"),        # crosses the segment boundary at t + 0.6
        ((t + 0.9, t + 0.91), b"sp"),
        ((t + 0.91, t + 1.4), b"nan"),           # covers a nan frame and a +inf/-inf pair
        ((t + 1.4, t + 1.7), b"gap"),            # no visual frames (gap below)
    ]
    w_iv = np.vstack([w_iv, [e[0] for e in extra]])
    w = np.vstack([w, np.array([[e[1]] for e in extra])])
    out["words"] = (w_iv, w)
    a_iv, a = out["acoustic"]
    start = a_iv[-1, 1]
    new_starts = np.arange(start, t + 2.5, 0.01)
    a_iv = np.vstack([a_iv, np.stack([new_starts, new_starts + 0.01], 1)])
    a = np.vstack([a, np.random.default_rng(1).normal(size=(len(new_starts), a.shape[1])).astype(np.float32)])
    for at, value, col in ((t + 1.0, np.nan, 1), (t + 1.1, np.inf, 2), (t + 1.2, -np.inf, 2)):
        a[np.argmin(np.abs(a_iv[:, 0] - at)), col] = value
    out["acoustic"] = (a_iv, a)
    v_iv, v = out["visual"]
    # 30 Hz frames, then a gap over the "gap" word, plus a frame ending exactly eps into "edge"
    new_starts = np.arange(v_iv[-1, 1], t + 1.35, 1 / 30)
    tail_iv = np.stack([new_starts, new_starts + 1 / 30], 1)
    # (the long window [t+0.3, t+1.0] makes frame ends non-monotone: the exact fallback path)
    tail_iv = np.vstack([tail_iv, [[t + 1.75, t + 1.8], [t + 0.02 - 0.05, t + 0.02 + 10e-4], [t + 0.3, t + 1.0]]])
    order = np.argsort(tail_iv[:, 0], kind="stable")
    rng = np.random.default_rng(2)
    out["visual"] = (np.vstack([v_iv, tail_iv[order]]),
                     np.vstack([v, rng.normal(size=(len(tail_iv), v.shape[1])).astype(np.float32)]))
    l_iv, labels = out["labels"]
    out["labels"] = (np.vstack([l_iv, [[t, t + 0.6], [t + 0.6, t + 1.7], [t + 2.0, t + 2.3]]]),
                     np.vstack([labels, [[1.5], [-2.0], [0.5]]]).astype(np.float32))  # last: no words
    return out


def write_raw(raw_dir: str | Path, videos: dict, folds: dict | None = None, skip: dict | None = None) -> Path:
    """Write the four .csd files, folds.json and manifest.json. ``skip`` = {role: [video ids]} to
    leave out of one modality."""
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    skip = skip or {}
    for role, name in FILES.items():
        data = {vid: video[role] for vid, video in videos.items() if vid not in skip.get(role, ())}
        write_csd(raw_dir / name, ROOTS[role], data, metadata(role))
    if folds is None:
        ids = sorted(videos)
        folds = {"train": ids[: max(1, len(ids) - 2)], "valid": ids[len(ids) - 2: len(ids) - 1],
                 "test": ids[len(ids) - 1:]}
    (raw_dir / "folds.json").write_text(json.dumps(folds))
    refresh_manifest(raw_dir)
    return raw_dir


def refresh_manifest(raw_dir: str | Path) -> None:
    """(Re)write manifest.json with the current hashes, e.g. after a test rewrote a file on purpose."""
    raw_dir = Path(raw_dir)
    files = {role: {"name": name, "sha256": sha256_file(raw_dir / name), "size": (raw_dir / name).stat().st_size,
                    "url": None} for role, name in FILES.items()}
    manifest = {"dataset": "demo", "source": "demo", "files": files, "folds": "folds.json"}
    (raw_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))


def small_align_params() -> dict:
    """params.yaml on the demo (its offline MiniLM tokenizer) with 16 subword positions: quick align runs."""
    from cpsl.config.schema import load_params

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    params["dataset"] = "demo"
    params["data"]["max_seq_len"] = 16
    return params
