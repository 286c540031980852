"""Benchmark: our align stage vs mmsdk's ``align('words', collapse_functions=[avg])`` on MOSI-sized input.

    python benchmarks/bench_align.py [--videos 93] [--keep DIR]

Generates (seeded) 93 videos, ~2,200 labelled segments, ~3 h of 100 Hz 74-d acoustic (with -inf values)
and 30 Hz 47-d visual frames (float64, as the CMU files store them) and ~2.5 words/s, into a temporary
folder. Then runs, each in its own child process:

  (a) mmsdk: load the words/acoustic/visual .csd files and ``align('words', [avg])`` (word level only;
      its label alignment would only add to its time);
  (b) ours: ``cpsl.stages.align.run_align`` = manifest hash check, word alignment, segments, MiniLM
      tokenisation, HDF5 cache written.

Each child reports its wall time from its own start (imports included) to the end of the work, and
its peak RSS (VmHWM, per process) at that point; word-level values are dumped afterwards (untimed) and the
parent checks they are equal for every word. Results go in benchmarks/RESULTS.md, section "## align".
"""
from __future__ import annotations

import time

_T0 = time.perf_counter()  # before the heavy imports: the child's figures include them

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

FILES = {"words": "BENCH_TimestampedWords.csd", "acoustic": "BENCH_COVAREP.csd",
         "visual": "BENCH_FACET_4.1.csd", "labels": "BENCH_Opinion_Segment_Labels.csd"}
ROOTS = {"words": "TimestampedWords", "acoustic": "COVAREP", "visual": "FACET_4.1", "labels": "Opinion Segment Labels"}
VOCAB = [w.encode() for w in ("i", "really", "liked", "the", "movie", "but", "acting", "was", "not", "great",
                              "it", "felt", "boring", "and", "long", "characters", "were", "amazing", "uh", "so")]


def _metadata(role: str) -> dict:
    keys = ("computational sequence description", "computational sequence version", "alignment compatible",
            "dataset name", "dataset version", "creator", "contact", "featureset bib citation", "dataset bib citation")
    return {k: f"bench {role}" for k in keys}


def words_and_segments(rng: np.random.Generator, n_segments: int, seconds_per_segment: float):
    """One video's words (~2.5/s, 15 % `sp`) inside ``n_segments`` opinion segments of ~0.85 x
    ``seconds_per_segment`` each, silence between them: (word intervals, words, segment intervals, duration)."""
    seg_len = seconds_per_segment * 0.85  # the rest is silence between segments
    t, w_iv, words, s_iv = 0.5, [], [], []
    for _ in range(n_segments):
        start, end = t, t + rng.uniform(0.5, 1.5) * seg_len
        while t < end:
            d = rng.uniform(0.05, 0.35) if rng.random() < 0.15 else rng.uniform(0.2, 0.6)
            w_iv.append((t, t + d))
            words.append(b"sp" if d < 0.2 else VOCAB[rng.integers(len(VOCAB))])
            t += d
        s_iv.append((start, t))
        t += rng.uniform(0.5, 1.5) * seconds_per_segment * 0.15  # silence between segments
    return w_iv, words, s_iv, t + 1.0


def generate(raw_dir: Path, n_videos: int = 93, seconds: float = 10800.0, segments: int = 2200, seed: int = 0) -> dict:
    from cpsl.formats.csd import write_csd
    from cpsl.runtime.io_utils import sha256_file

    rng = np.random.default_rng(seed)
    per_video = rng.multinomial(segments - n_videos, np.ones(n_videos) / n_videos) + 1
    data = {role: {} for role in FILES}
    for v, n_seg in enumerate(per_video):
        vid = f"bench{v:03d}"
        w_iv, words, s_iv, duration = words_and_segments(rng, n_seg, seconds / segments)
        a_start = np.arange(0.0, duration, 0.01)
        acoustic = rng.normal(size=(len(a_start), 74))
        acoustic[rng.random(acoustic.shape) < 0.002] = -np.inf  # COVAREP's -inf values
        v_start = np.arange(0.0, duration, 1 / 30)
        data["words"][vid] = (np.array(w_iv), np.array(words, dtype="S")[:, None])
        data["acoustic"][vid] = (np.stack([a_start, a_start + 0.01], 1), acoustic)
        data["visual"][vid] = (np.stack([v_start, v_start + 1 / 30], 1), rng.normal(size=(len(v_start), 47)))
        data["labels"][vid] = (np.array(s_iv), rng.uniform(-3, 3, size=(len(s_iv), 1)))
    raw_dir.mkdir(parents=True, exist_ok=True)
    for role, name in FILES.items():
        write_csd(raw_dir / name, ROOTS[role], data[role], _metadata(role))
    ids = sorted(data["words"])
    folds = {"train": ids[:52], "valid": ids[52:62], "test": ids[62:]}
    (raw_dir / "folds.json").write_text(json.dumps(folds))
    files = {role: {"name": name, "sha256": sha256_file(raw_dir / name), "size": (raw_dir / name).stat().st_size,
                    "url": None} for role, name in FILES.items()}
    (raw_dir / "manifest.json").write_text(json.dumps({"dataset": "demo", "source": "demo", "files": files,
                                                       "folds": "folds.json"}))
    return {"videos": n_videos, "segments": int(per_video.sum()),
            "words": sum(len(w[0]) for w in data["words"].values()),
            "hours": round(float(sum(d[0][-1, 1] for d in data["acoustic"].values()) / 3600), 2),
            "acoustic_frames": sum(len(d[0]) for d in data["acoustic"].values()),
            "visual_frames": sum(len(d[0]) for d in data["visual"].values())}


def _peak_mb() -> float:
    """This process's peak RSS. VmHWM is per address space, so unlike ru_maxrss it does not inherit
    the parent's size at fork."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _dump(path: Path, values: dict) -> None:
    """values: role -> {word key: vector}; saved as keys + stacked rows (after non-finite -> 0)."""
    out = {}
    for role, table in values.items():
        keys = sorted(table)
        rows = np.array([np.asarray(table[k], dtype=np.float64).reshape(-1) for k in keys])
        out[f"{role}_keys"] = np.array(keys)
        out[f"{role}_values"] = np.nan_to_num(rows, nan=0.0, posinf=0.0, neginf=0.0)
    np.savez(path, **out)


def child_sdk(raw: Path, dump: Path) -> dict:
    import contextlib
    import io
    import warnings

    os.environ["TQDM_DISABLE"] = "1"
    from mmsdk import mmdatasdk

    def avg(intervals, features):
        try:
            return np.average(features, axis=0)
        except TypeError:  # the word stream itself (bytes)
            return features

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ds = mmdatasdk.mmdataset({role: str(raw / FILES[role]) for role in ("words", "acoustic", "visual")})
        ds.align("words", collapse_functions=[avg])
    result = {"wall_s": time.perf_counter() - _T0, "peak_rss_mb": _peak_mb()}
    _dump(dump, {role: {k: v["features"] for k, v in ds[role].data.items()} for role in ("acoustic", "visual")})
    return result


def child_ours(raw: Path, dump: Path) -> dict:
    import contextlib
    import io

    from cpsl.config.schema import load_params
    from cpsl.stages.align import run_align

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    params["dataset"] = "demo"  # the MiniLM tokenizer (demo.text_model)
    with contextlib.redirect_stdout(io.StringIO()):
        report = run_align(params, raw_dir=raw, out_path=raw.parent / "ours.h5")
    result = {"wall_s": time.perf_counter() - _T0, "peak_rss_mb": _peak_mb(), "stage_s": report["seconds"],
              "segments": report["segments"], "tokenizer_backend": report["tokenizer_backend"]}
    # untimed: the word-level values our word_align gives, for the equality check
    from cpsl.align.word_align import frame_means, reference_kept
    from cpsl.formats.csd import open_csd

    values: dict = {"acoustic": {}, "visual": {}}
    with open_csd(raw / FILES["words"]) as words:
        for role in values:
            with open_csd(raw / FILES[role]) as seq:
                for vid in words.video_ids():
                    w_iv, _ = words.read(vid)
                    means, counts = frame_means(*seq.read(vid), w_iv)
                    for i in np.flatnonzero(reference_kept(w_iv) & (counts > 0)):
                        values[role][f"{vid}[{i}]"] = means[i]
    _dump(dump, values)
    return result


def _run_child(which: str, raw: Path, dump: Path) -> dict:
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", which, "--raw", str(raw), "--dump", str(dump)],
                            stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{which} child failed (status {status})")
    result = json.loads(out.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t  # incl. interpreter start and the untimed dump
    result["process_peak_rss_mb"] = usage.ru_maxrss / 1024  # includes the parent's size at fork
    return result


def compare(sdk_dump: Path, ours_dump: Path) -> dict:
    a, b = np.load(sdk_dump), np.load(ours_dump)
    out = {}
    for role in ("acoustic", "visual"):
        assert list(a[f"{role}_keys"]) == list(b[f"{role}_keys"]), f"{role}: different words have frames"
        ok = np.allclose(a[f"{role}_values"], b[f"{role}_values"], rtol=1e-6, atol=1e-9)
        out[role] = {"words": len(a[f"{role}_keys"]), "equal": bool(ok),
                     "max_abs_diff": float(np.abs(a[f"{role}_values"] - b[f"{role}_values"]).max())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=93)
    ap.add_argument("--keep", help="generate into this folder (kept) instead of a temporary one")
    ap.add_argument("--child", choices=["sdk", "ours", "gen"], help=argparse.SUPPRESS)
    ap.add_argument("--raw", help=argparse.SUPPRESS)
    ap.add_argument("--dump", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "gen":
        print(json.dumps(generate(Path(args.raw), n_videos=args.videos, segments=round(2200 * args.videos / 93),
                                  seconds=10800.0 * args.videos / 93), default=float))
        return
    if args.child:
        fn = child_sdk if args.child == "sdk" else child_ours
        print(json.dumps(fn(Path(args.raw), Path(args.dump))))
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        raw = root / "raw"
        t = time.perf_counter()
        # generate in a child too, so the parent stays small (children fork from it)
        gen = subprocess.run([sys.executable, __file__, "--child", "gen", "--raw", str(raw), "--videos",
                              str(args.videos)], check=True, stdout=subprocess.PIPE, text=True)
        size = json.loads(gen.stdout.strip().splitlines()[-1])
        print(f"input: {size} (generated in {time.perf_counter() - t:.1f} s)")
        sdk = _run_child("sdk", raw, root / "sdk.npz")
        ours = _run_child("ours", raw, root / "ours.npz")
        eq = compare(root / "sdk.npz", root / "ours.npz")
    rows = [("mmsdk align('words', [avg])", sdk), ("ours: run_align (hash+align+tokenize+cache)", ours)]
    print("\n| run | wall s (imports incl.) | peak RSS MB |\n|---|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['wall_s']:.2f} | {r['peak_rss_mb']:.0f} |")
    print(f"\nspeed-up {sdk['wall_s'] / ours['wall_s']:.1f}x; "
          f"peak memory ratio {ours['peak_rss_mb'] / sdk['peak_rss_mb']:.2f}")
    print(f"ours inside run_align: {ours['stage_s']:.2f} s; tokenizer backend {ours['tokenizer_backend']}; "
          f"segments {ours['segments']}")
    print(f"word-level equality: {eq}")
    print(f"raw: {json.dumps({'sdk': sdk, 'ours': ours})}")
    if not all(v["equal"] for v in eq.values()):
        raise SystemExit("word-level values differ")


if __name__ == "__main__":
    main()
