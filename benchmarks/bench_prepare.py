"""Benchmark of the prepare stage on the demo: generation + writing must take < 5 s (default params).

    python benchmarks/bench_prepare.py [--repeat 3]

Prints one markdown table row per measurement; paste the latest into benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

from cpsl.config import load_params
from cpsl.data.demo import generate_demo
from cpsl.data.prepare import run_prepare

REPO = Path(__file__).resolve().parents[1]


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    params["dataset"] = "demo"
    demo = params["demo"]
    data = generate_demo(demo)
    n_seg = sum(len(v) for v in data.labels.values())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "raw"
        quiet = contextlib.redirect_stdout(io.StringIO())
        gen = _best(lambda: generate_demo(demo), args.repeat)

        def fresh():
            import shutil
            shutil.rmtree(out, ignore_errors=True)
            with quiet:
                run_prepare(params, out)

        full = _best(fresh, args.repeat)
        with quiet:
            noop = _best(lambda: run_prepare(params, out), args.repeat)
        size = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    print(f"demo: {demo['videos']} videos, {n_seg} segments, raw folder {size:.1f} MB (best of {args.repeat})")
    print("| step | seconds | target |")
    print("|---|---|---|")
    print(f"| generate_demo (in memory) | {gen:.2f} | |")
    print(f"| run_prepare, empty folder (generate + write + hash + manifest) | {full:.2f} | < 5 |")
    print(f"| run_prepare, complete folder (regenerate + compare, no write) | {noop:.2f} | |")


if __name__ == "__main__":
    main()
