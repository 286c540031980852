"""Grid throughput on one GPU: K concurrent MOSI-shaped train jobs sharing the device, for K = 1, 2, 4, 8.

    python benchmarks/bench_grid_throughput.py                         # on a CUDA machine (about 5 min on an H100)
    python benchmarks/bench_grid_throughput.py --set execution.step=eager  # the same without the issue-9 step
    python benchmarks/bench_grid_throughput.py --smoke                 # tiny DeBERTa on the CPU, K = 1, 2

Each job is its own process (as `CPSL_GPU_SLOTS=K snakemake --resources gpu=K` would start them) running the
REAL training step (``cpsl.train.loop.make_stepper`` via benchmarks/bench_step_overhead.Trainer, in the mode
of ``execution.step``: auto = CUDA graphs) of A6 on the deberta-v3-base architecture built from its config with
random weights (nothing downloaded), over a random MOSI-shaped training set (1,284 segments x 50 tokens, d_a 74,
d_v 47) held on the device in batches of 8, as ``cpsl train`` holds it. Every job warms up, then all start
timing together and run ``--steps`` steps.

Throughput is EXTRAPOLATED from those steps: a finished run = 30 epochs x ceil(1284 / 8) = 161 steps = 4,830
training steps; run-equivalents per hour = (K x steps / the window from the first timed step of any job to the
last one of any job) x 3600 / 4830. Not included, so a real run takes longer: the per-epoch validation pass
(forward only, MOSI's 229 segments), evaluation, start-up and checkpoint writes.
Prints JSON, and a Markdown table on stderr.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MOSI_TRAIN_SEGMENTS = 1284
EPOCHS = 30


def steps_per_run(segments: int, batch: int, epochs: int = EPOCHS) -> int:
    return epochs * math.ceil(segments / batch)


def worker(args) -> None:
    """One train job: build, warm up, say 'ready', wait for the go file, time ``--steps`` steps, print JSON."""
    import torch

    sys.path.insert(0, str(HERE))
    from bench_gpu import deberta_v3_base_config
    from bench_step_overhead import MOSI_SHAPE, REPO, Trainer

    from cpsl.config.schema import apply_overrides, load_params
    from cpsl.nn.text_encoder import tiny_deberta_config

    torch.set_num_threads(args.threads)
    params = copy.deepcopy(load_params(REPO / "params.yaml"))
    if args.overrides:
        params = apply_overrides(params, args.overrides, "params.yaml")
    if args.smoke:
        config = tiny_deberta_config()
        params["model"].update(intermediate_dim=8, fusion_dim=8)
    else:
        config = deberta_v3_base_config()
    device = args.device
    trainer = Trainer(params, args.ablation, config, device, MOSI_SHAPE["acoustic_dim"], MOSI_SHAPE["visual_dim"],
                      bf16=args.bf16, pretrained=False, mode=params["execution"]["step"])

    # The training set lives on the device, as in ``cpsl train``; batches are slices of it.
    g = torch.Generator().manual_seed(args.job)
    n, seq = args.segments, MOSI_SHAPE["seq_len"]
    lengths = torch.randint(seq // 2, seq + 1, (n,), generator=g)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    data = {"input_ids": torch.randint(1000, config.vocab_size, (n, seq), generator=g) * mask,
            "attention_mask": mask,
            "acoustic": torch.randn(n, seq, MOSI_SHAPE["acoustic_dim"], generator=g) * mask[..., None],
            "visual": torch.randn(n, seq, MOSI_SHAPE["visual_dim"], generator=g) * mask[..., None],
            "label": torch.empty(n).uniform_(-3, 3, generator=g)}
    data = {k: v.to(device) for k, v in data.items()}
    batch_size = MOSI_SHAPE["batch"]
    starts = list(range(0, n, batch_size))

    def batches():
        while True:
            for perm_start in starts:
                yield {k: v[perm_start:perm_start + batch_size] for k, v in data.items()}

    it = batches()
    cuda = device == "cuda"
    for _ in range(args.warmup):
        trainer.step(next(it))
    if cuda:
        torch.cuda.synchronize()
    print("ready", flush=True)
    while not Path(args.go).exists():
        time.sleep(0.01)
    start, t0 = time.time(), time.perf_counter()
    for _ in range(args.steps):
        trainer.step(next(it))
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    out = {"job": args.job, "steps": args.steps, "seconds": elapsed, "steps_per_s": args.steps / elapsed,
           "start": start, "end": start + elapsed, "ran_as": trainer.stepper.describe()}
    if cuda:
        out["peak_gpu_mem_GiB"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(out), flush=True)


def run_k(k: int, args, threads: int) -> dict:
    """Start ``k`` workers, wait until all are warm, release them together, collect their rates."""
    with tempfile.TemporaryDirectory() as tmp:
        go = Path(tmp) / "go"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--go", str(go), "--threads", str(threads),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--ablation", args.ablation,
               "--segments", str(args.segments), "--device", args.device]
        cmd += ["--smoke"] * args.smoke + ["--bf16"] * args.bf16
        for item in args.overrides:
            cmd += ["--set", item]
        procs = [subprocess.Popen(cmd + ["--job", str(j)], stdout=subprocess.PIPE, text=True) for j in range(k)]
        try:
            for p in procs:
                line = p.stdout.readline().strip()
                if line != "ready":
                    raise RuntimeError(f"worker failed before timing (exit {p.wait()}): {line!r}")
            go.touch()
            results = []
            for p in procs:
                out, _ = p.communicate()
                if p.returncode != 0:
                    raise RuntimeError(f"worker exited {p.returncode}")
                results.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    rates = [r["steps_per_s"] for r in results]
    # The window from the first job's first timed step to the last job's last one: all K x steps steps were
    # done in it (conservative: a job that finished early counts as idle until the last one is done).
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    total = k * args.steps / wall
    per_run = steps_per_run(args.segments, 8)
    row = {"jobs": k, "threads_per_job": threads, "steps_per_s_per_job_median": statistics.median(rates),
           "steps_per_s_per_job_min": min(rates), "steps_per_s_sum_of_jobs": sum(rates),
           "window_s": wall, "steps_per_s_total": total, "runs_per_hour": total * 3600 / per_run,
           "gpu_hours_per_85_runs": 85 / (total * 3600 / per_run)}
    row["ran_as"] = sorted({r["ran_as"] for r in results})
    if "peak_gpu_mem_GiB" in results[0]:
        row["peak_gpu_mem_GiB_per_job_max"] = max(r["peak_gpu_mem_GiB"] for r in results)
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| concurrent jobs | steps/s per job (median) | steps/s total | 30-epoch runs / h (extrapolated) "
             "| GPU-h for 17 x 5 runs |", "|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['jobs']} | {r['steps_per_s_per_job_median']:.2f} | {r['steps_per_s_total']:.2f} | "
                     f"{r['runs_per_hour']:.1f} | {r['gpu_hours_per_85_runs']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny DeBERTa on the CPU, K = 1, 2, few steps")
    ap.add_argument("--jobs", default=None, help="comma-separated K values (default 1,2,4,8; smoke 1,2)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per job (default 300; smoke 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per job (default 20; smoke 1)")
    ap.add_argument("--ablation", default="A6")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a param of the trained model/step (validated like params.yaml)")
    ap.add_argument("--segments", type=int, default=MOSI_TRAIN_SEGMENTS)
    # worker-only
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--go", help=argparse.SUPPRESS)
    ap.add_argument("--job", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--device", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        worker(args)
        return

    import torch

    if args.smoke:
        args.device = "cpu"
        ks = [int(k) for k in (args.jobs or "1,2").split(",")]
        args.steps, args.warmup = args.steps or 3, args.warmup if args.warmup is not None else 1
        args.segments = min(args.segments, 64)
    else:
        if not torch.cuda.is_available():
            sys.exit("bench_grid_throughput: no CUDA device (use --smoke to check the script on a CPU)")
        args.device = "cuda"
        ks = [int(k) for k in (args.jobs or "1,2,4,8").split(",")]
        args.steps, args.warmup = args.steps or 300, args.warmup if args.warmup is not None else 20
    cpus = os.cpu_count() or 1
    rows = [run_k(k, args, max(1, cpus // k)) for k in ks]
    info = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
            "backbone": "tiny deberta (smoke)" if args.smoke else "deberta-v3-base architecture, random weights",
            "ablation": args.ablation, "bf16": args.bf16, "overrides": args.overrides,
            "train_segments": args.segments, "batch": 8, "seq_len": 50, "warmup_steps": args.warmup,
            "timed_steps_per_job": args.steps, "steps_per_30_epoch_run": steps_per_run(args.segments, 8),
            "extrapolated": "runs/h from timed training steps only (no validation, evaluation, start-up)",
            "gpu_sharing": "time-slicing between processes (no MPS)" if args.device == "cuda" else "none (CPU)"}
    print(json.dumps({**info, "rows": rows}, indent=2))
    print(markdown(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
