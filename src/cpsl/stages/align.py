"""Stage ``align``: raw CMU computational sequences -> subword-aligned HDF5 cache.

Reads ``<raw>/manifest.json`` (and the files and folds it lists; the reader: :mod:`cpsl.formats.raw_folder`),
checks every file against the manifest's sha256, aligns acoustic/visual frames to words
(:mod:`cpsl.align.word_align`, mmsdk semantics), groups words into the labelled segments, expands to subwords
(:mod:`cpsl.align.subwords`) and writes ``data/processed/<dataset>.h5`` (:mod:`cpsl.formats.cache`) plus
``<dataset>.report.json``.

Choices where the SDK or the paper leave room:

* Segment membership uses the words' own intervals, and every modality follows the words, so a segment
  always has equal-length text/acoustic/visual sequences (the SDK's second alignment uses each
  modality's collapsed intervals, which can disagree with the words' at segment edges).
* ``sp`` (silence) tokens take part in word-level alignment, as in the SDK, and are dropped afterwards.
* A segment left with no words (none intersect it, or only ``sp``) is DROPPED and listed in the report,
  not an error: real MOSI has a few such segments, and failing the whole stage on them would make the
  dataset unusable, while a listed drop keeps the loss visible. Segments shorter than the SDK's epsilon
  are dropped the same way.
* A video missing from one modality (or from the folds) is skipped and listed; a video in the folds
  but in no file is listed as missing too.
* Labels: the first feature column of the label sequence; non-finite or outside [-3, 3] is an error
  naming the segment (the sentiment scale is [-3, 3], anything else is a corrupt file).
* Non-finite word-level values (COVAREP's -inf) become 0 after averaging, counted per modality; a word
  with no intersecting frame gets a zero vector (the SDK's ``impute`` default), counted per modality
  (a video with no frames at all: every word). A finite mean beyond float32's range (|x| > 3.4e38) would
  become inf in the float32 cache: it is replaced by 0 too and counted separately
  (``float32_overflow_replaced``).
* Words must be UTF-8 bytes: a numeric word stream or undecodable bytes are errors naming the video.
* Video ids (folds.json, every file's videos) must be 1-128 printable characters without '/'
  (:func:`cpsl.formats.raw_folder.id_problem`): an id becomes an HDF5 name, a segment id and a CSV cell. An
  interval that ends before it starts (word, frame or segment) is an error naming the file, the video and the
  row: the CMU files cannot be checked here (no download in this project's sessions, and mmsdk ships no data),
  so a real file with one would fail loudly rather than silently shift the word-level means.
"""
from __future__ import annotations

import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping

import numpy as np

from cpsl.align.subwords import Segment, load_tokenizer, to_subwords
from cpsl.align.word_align import (
    EPSILON,
    frame_means,
    reference_kept,
    replace_nonfinite,
    segment_members,
)
from cpsl.config import paths
from cpsl.config.text_model import text_model_for
from cpsl.errors import PipelineError
from cpsl.formats.cache import SPLITS, write_cache
from cpsl.formats.csd import ComputationalSequence, CSDError
from cpsl.formats.csd_safety import NotSelfContainedError
from cpsl.formats.file_hashes import HashRecords, records_path
from cpsl.formats.raw_folder import ROLES, check_digests, folds_path, read_folds, read_manifest, video_id_message
from cpsl.runtime.io_utils import remove_stale_temporaries, write_json_atomic

FEATURE_ROLES = ("acoustic", "visual")
SILENCE = "sp"
LABEL_RANGE = (-3.0, 3.0)


class AlignError(PipelineError, ValueError):
    """Bad raw input for alignment; the message names the file and the video or segment."""


def report_path_for(cache_path: str | Path) -> Path:
    cache_path = Path(cache_path)
    return cache_path.with_name(cache_path.stem + ".report.json")


# ---------------------------------------------------------------- video ids (the raw files' own)

def check_video_id(vid: str, where) -> None:
    """Refuse a video id of ``where`` (a file) that :func:`cpsl.formats.raw_folder.id_problem` objects to, in one
    line."""
    message = video_id_message(vid, where)
    if message:
        raise AlignError(message)


# ---------------------------------------------------------------- per-video alignment

class _Dims:
    """Feature width per modality, fixed by the first video read; a different width is an error."""

    def __init__(self):
        self.dims: dict[str, tuple[int, str]] = {}

    def check(self, role: str, seq: ComputationalSequence, vid: str, features: np.ndarray) -> None:
        dim = features.shape[1]
        if role not in self.dims:
            self.dims[role] = (dim, vid)
        elif self.dims[role][0] != dim:
            first_dim, first_vid = self.dims[role]
            raise AlignError(
                f"{seq.path}: video '{vid}' has {role} features of width {dim}, "
                f"but video '{first_vid}' has {first_dim}"
            )


def _numeric(seq: ComputationalSequence, vid: str, features: np.ndarray) -> np.ndarray:
    if not np.issubdtype(features.dtype, np.number):
        raise AlignError(f"{seq.path}: video '{vid}' has non-numeric features ({features.dtype})")
    return features


def _check_ordered(seq: ComputationalSequence, vid: str, intervals: np.ndarray, what: str) -> None:
    bad = np.flatnonzero(intervals[:, 1] < intervals[:, 0] - EPSILON)
    if len(bad):
        i = int(bad[0])
        raise AlignError(f"{seq.path}: video '{vid}' {what} {i} (row {i} of its intervals) ends before it starts "
                         f"{intervals[i].tolist()}")


def align_video(vid: str, seqs: Mapping[str, ComputationalSequence], dims: _Dims,
                stats: dict) -> tuple[list[Segment], list[tuple[str, str]]]:
    """Word-align one video and cut it into labelled segments. Returns (segments, [(dropped id, reason)])."""
    word_iv, words = seqs["words"].read_words(vid)
    _check_ordered(seqs["words"], vid, word_iv, "word")
    kept = np.flatnonzero(reference_kept(word_iv))  # the SDK gives too-short words no entry at all
    word_iv, words = word_iv[kept], [words[i] for i in kept]
    stats["words"] += len(words)

    word_values: dict[str, np.ndarray] = {}
    for role in FEATURE_ROLES:
        seq = seqs[role]
        frame_iv, feats = seq.read(vid, numeric=True)
        _check_ordered(seq, vid, frame_iv, "frame")  # a reversed frame would silently change the word means
        feats = _numeric(seq, vid, feats)
        dims.check(role, seq, vid, feats)
        means, counts = frame_means(frame_iv, feats, word_iv)
        stats["nonfinite_replaced"][role] += replace_nonfinite(means)
        stats["words_without_frames"][role] += int((counts == 0).sum())
        # a finite float64 mean beyond float32's range (e.g. 1e300) would become inf in the cache
        with np.errstate(over="ignore"):
            values = means.astype(np.float32)
        stats["overflow_replaced"][role] += replace_nonfinite(values)
        word_values[role] = values

    label_seq = seqs["labels"]
    seg_iv, label_feats = label_seq.read(vid, numeric=True)
    label_feats = _numeric(label_seq, vid, label_feats)
    _check_ordered(label_seq, vid, seg_iv, "segment")
    members = segment_members(word_iv, seg_iv)
    segments, dropped = [], []
    for k, idx in enumerate(members):
        seg_id = f"{vid}[{k}]"
        label = float(label_feats[k, 0])
        if not np.isfinite(label) or not LABEL_RANGE[0] <= label <= LABEL_RANGE[1]:
            raise AlignError(f"{label_seq.path}: segment '{seg_id}' has label {label}, outside {list(LABEL_RANGE)}")
        idx = np.array([i for i in idx if words[i].strip() and words[i].strip().lower() != SILENCE], dtype=np.int64)
        if not reference_kept(seg_iv[k:k + 1])[0]:
            dropped.append((seg_id, "segment interval shorter than the SDK epsilon"))
            continue
        if len(idx) == 0:
            dropped.append((seg_id, "no words in segment (after dropping 'sp')"))
            continue
        segments.append(Segment(seg_id, [words[i].strip() for i in idx], word_values["acoustic"][idx],
                                word_values["visual"][idx], label))
    return segments, dropped


# ---------------------------------------------------------------- the stage

def _open_all(raw_dir: Path, manifest: dict) -> dict[str, ComputationalSequence]:
    seqs: dict[str, ComputationalSequence] = {}
    try:
        for role in ROLES:
            seqs[role] = ComputationalSequence(raw_dir / manifest["files"][role]["name"])
    except (CSDError, NotSelfContainedError):
        for seq in seqs.values():
            seq.close()
        raise
    return seqs


def _feature_name(seq: ComputationalSequence) -> str:
    return seq.root_name or seq.path.stem


def _align_all(raw_dir: Path, manifest: dict, fold_of: Mapping[str, str]):
    """Align every video of the folds; returns segments per split and the bookkeeping for the report."""
    stats = {"words": 0, "nonfinite_replaced": defaultdict(int), "words_without_frames": defaultdict(int),
             "overflow_replaced": defaultdict(int)}
    per_split: dict[str, list[Segment]] = {s: [] for s in SPLITS}
    dropped: list[dict] = []
    skipped_videos: list[dict] = []
    seqs = _open_all(raw_dir, manifest)
    try:
        present = {role: set(seq.video_ids()) for role, seq in seqs.items()}
        for role, seq in seqs.items():
            for vid in sorted(present[role]):
                check_video_id(vid, seq.path)
        every = set().union(*present.values())
        not_in_folds = sorted(every - set(fold_of))
        dims = _Dims()
        for vid in sorted(fold_of):
            missing = [role for role in ROLES if vid not in present[role]]
            if missing:
                skipped_videos.append({"video": vid, "split": fold_of[vid], "missing_from": missing})
                continue
            segments, gone = align_video(vid, seqs, dims, stats)  # CSDError (corrupt video) propagates
            per_split[fold_of[vid]].extend(segments)
            dropped.extend({"segment": sid, "split": fold_of[vid], "reason": why} for sid, why in gone)
        dims_out = {role: dims.dims.get(role, (seqs[role].feature_dim(), ""))[0] for role in FEATURE_ROLES}
        names = {role: _feature_name(seqs[role]) for role in FEATURE_ROLES}
    finally:
        for seq in seqs.values():
            seq.close()

    return per_split, dropped, skipped_videos, not_in_folds, stats, dims_out, names


def run_align(params: Mapping, raw_dir: str | Path | None = None, out_path: str | Path | None = None) -> dict:
    """Build the cache for ``params['dataset']``; return the report (also printed and saved as JSON)."""
    t0 = time.perf_counter()
    dataset = params["dataset"]
    raw_dir = Path(raw_dir) if raw_dir is not None else paths.raw_dir(dataset)
    out_path = Path(out_path) if out_path is not None else paths.processed_path(dataset)
    max_seq_len = int(params["data"]["max_seq_len"])
    text_model = text_model_for(params)
    # a SIGKILLed align leaves its temporaries (SIGKILL skips clean-up); only this stage's own names
    remove_stale_temporaries(out_path.parent, [out_path.name, report_path_for(out_path).name])

    manifest = read_manifest(raw_dir)
    fold_of = read_folds(folds_path(raw_dir, manifest))
    tokenizer = load_tokenizer(text_model)  # before the heavy work: a bad model name fails fast

    # Hash the raw files in background threads (hashlib releases the GIL) while aligning: the hash of
    # MOSI's ~1 GB of frames would otherwise cost as much as the alignment itself. A file whose stat record
    # (prepare's) still matches is not read again (cpsl.formats.file_hashes). Nothing is written before every digest
    # has matched.
    records = HashRecords(records_path(raw_dir))
    with ThreadPoolExecutor(max_workers=2) as pool:
        digests = {role: pool.submit(records.sha256, raw_dir / manifest["files"][role]["name"]) for role in ROLES}

        def digest_of(role: str) -> str:
            return digests[role].result()

        try:
            aligned = _align_all(raw_dir, manifest, fold_of)
        except (AlignError, CSDError, NotSelfContainedError):
            check_digests(raw_dir, manifest, digest_of)  # a changed file explains the failure better
            raise
        check_digests(raw_dir, manifest, digest_of)
    per_split, dropped, skipped_videos, not_in_folds, stats, dims_out, names = aligned

    splits, truncated = {}, []
    for split in SPLITS:
        batch = to_subwords(per_split[split], tokenizer, max_seq_len, dims_out["acoustic"], dims_out["visual"])
        truncated.extend(batch.truncated)
        splits[split] = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                         "acoustic": batch.acoustic, "visual": batch.visual, "label": batch.label,
                         "segment_id": batch.segment_id}
    attrs = {
        "dataset": dataset, "tokenizer": text_model, "max_seq_len": max_seq_len,
        "acoustic_name": names["acoustic"], "visual_name": names["visual"],
        "acoustic_dim": dims_out["acoustic"], "visual_dim": dims_out["visual"],
        "raw_manifest_sha256": {role: manifest["files"][role]["sha256"] for role in ROLES},
    }
    write_cache(out_path, splits, attrs)

    report = {
        "cache": str(out_path),
        "segments": {split: len(per_split[split]) for split in SPLITS},
        "words_aligned": stats["words"],
        "segments_dropped": dropped,
        "videos_skipped": skipped_videos,
        "videos_not_in_folds": not_in_folds,
        "nonfinite_replaced": dict(stats["nonfinite_replaced"]),
        "float32_overflow_replaced": dict(stats["overflow_replaced"]),
        "words_without_frames": dict(stats["words_without_frames"]),
        "segments_truncated": {"count": len(truncated), "max_subwords": max_seq_len - 2, "ids": truncated},
        "tokenizer_backend": tokenizer.backend,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json_atomic(report_path_for(out_path), report)
    records.save()  # after the outputs: a killed align leaves them as they were
    print(format_report(report))
    return report


def format_report(report: Mapping) -> str:
    by_reason: dict[str, int] = defaultdict(int)
    for d in report["segments_dropped"]:
        by_reason[d["reason"]] += 1
    lines = [
        f"align: wrote {report['cache']} in {report['seconds']:.1f} s",
        "  segments: " + ", ".join(f"{s} {n}" for s, n in report["segments"].items()),
        f"  segments dropped: {len(report['segments_dropped'])}"
        + "".join(f"; {n} {why}" for why, n in sorted(by_reason.items())),
        f"  videos skipped (missing from a modality): {len(report['videos_skipped'])}"
        + (" " + ", ".join(v["video"] for v in report["videos_skipped"][:5]) if report["videos_skipped"] else ""),
        f"  videos not in folds: {len(report['videos_not_in_folds'])}",
        "  non-finite values replaced by 0: "
        + ", ".join(f"{r} {report['nonfinite_replaced'].get(r, 0)}" for r in FEATURE_ROLES),
        "  values beyond float32 range replaced by 0: "
        + ", ".join(f"{r} {report.get('float32_overflow_replaced', {}).get(r, 0)}" for r in FEATURE_ROLES),
        "  words without frames (zero vectors): "
        + ", ".join(f"{r} {report['words_without_frames'].get(r, 0)}" for r in FEATURE_ROLES),
        f"  segments truncated to {report['segments_truncated']['max_subwords']} subwords: "
        f"{report['segments_truncated']['count']}",
        f"  details: {report_path_for(report['cache'])}",
    ]
    return "\n".join(lines)
