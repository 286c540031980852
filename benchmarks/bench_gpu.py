"""GPU benchmark of ONE training-step case: ablation x execution.step x precision x AdamW kernels x graph scope, on the
paper's backbone (deberta-v3-base architecture, random weights, no download) with MOSI-shaped batches
(8 x 50, d_a 74, d_v 47). One case per process, so that a case that fails (a CUDA graph capture that fails
leaves the process unusable) or is killed loses nothing but itself; ``benchmarks/gpu_session.sh`` runs the cases
and prints them in one table (``benchmarks/gpu_session_summary.py``).

    python benchmarks/bench_gpu.py --ablation A6 --step auto                      # on a CUDA machine
    python benchmarks/bench_gpu.py --ablation A6 --step eager --precision bf16
    python benchmarks/bench_gpu.py --ablation A6 --step auto --optimizer fused --scope step
    python benchmarks/bench_gpu.py --smoke --step eager                           # tiny config on the CPU

The case runs the REAL step of ``cpsl train`` (``cpsl.train.loop.make_stepper`` and ``make_optimizer``:
forward, Eq. 4, backward, statistics, Eq. 5-6 + GE, norm, clipping, AdamW). The graph case runs as ``auto``, as
``cpsl train`` does by default, and reports the mode it REALLY ran as (``ran_as``: ``cuda_graph``, or
``sync_free (CUDA graphs off: why)`` after a failed exactness check); a failed capture stops the case with its
one-line error in the JSON. After ``--warmup`` steps (which include the capture and the exactness checks of the
graph) ``--steps`` steps are timed in blocks of 5, CUDA-synchronised around each block, so a block's time
includes all its queued work. Reports steps/s (median block), the min block, the epoch time for MOSI's 1,284
training segments (161 steps, validation excluded) and the peak GPU memory of the process (model, AdamW state,
graph pools, steps). TF32 stays off as in ``cpsl train``. Prints one JSON object (also on failure, then exit 1).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step_overhead import MOSI_SHAPE, REPO, Trainer, random_batch  # noqa: E402

from cpsl.config.schema import load_params  # noqa: E402
from cpsl.nn.text_encoder import tiny_deberta_config  # noqa: E402

MOSI_TRAIN_SEGMENTS = 1284


def deberta_v3_base_config() -> transformers.DebertaV2Config:
    """microsoft/deberta-v3-base's hyper-parameters, written out (no hub access needed)."""
    return transformers.DebertaV2Config(
        vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=512,
        type_vocab_size=0, initializer_range=0.02, layer_norm_eps=1e-7, relative_attention=True,
        max_relative_positions=-1, position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
        pos_att_type=["p2c", "c2p"], position_biased_input=False, pad_token_id=0,
    )


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_block(trainer: Trainer, batches, start: int, n: int, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    for i in range(n):
        trainer.step(batches[(start + i) % len(batches)])
    sync(device)
    return (time.perf_counter() - t0) / n


def case_params(args) -> dict:
    params = copy.deepcopy(load_params(REPO / "params.yaml"))
    params["execution"].update(step=args.step, optimizer_impl=args.optimizer, cuda_graph_scope=args.scope)
    if args.smoke:
        params["model"].update(intermediate_dim=8, fusion_dim=8)
    return params


def run_case(args, device: str, record: dict, block: int = 5) -> None:
    """Build, warm up and time one case; fills ``record`` as it goes (so a failure still reports how far it got)."""
    config = tiny_deberta_config() if args.smoke else deberta_v3_base_config()
    bf16 = args.precision == "bf16"
    # several full batches (as the training loop gathers them on the device)
    batches = [random_batch(config.vocab_size, device, MOSI_SHAPE["batch"], MOSI_SHAPE["seq_len"],
                            MOSI_SHAPE["acoustic_dim"], MOSI_SHAPE["visual_dim"], seed=s) for s in range(8)]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(case_params(args), args.ablation, config, device, MOSI_SHAPE["acoustic_dim"],
                      MOSI_SHAPE["visual_dim"], bf16=bf16, pretrained=False, mode=None)
    record["params_M"] = sum(p.numel() for p in trainer.model.parameters()) / 1e6
    record["stage"] = "warm-up (capture and exactness checks included)"
    for i in range(args.warmup):
        trainer.step(batches[i % len(batches)])
    sync(device)
    record["ran_as"] = trainer.stepper.describe()
    record["stage"] = "timing"
    per_step, done = [], 0
    while done < args.steps:
        per_step.append(time_block(trainer, batches, done, block, device))
        done += block
    median = statistics.median(per_step)
    record.update(stage="done", ran_as=trainer.stepper.describe(), timed_steps=done, steps_per_s=1.0 / median,
                  median_step_ms=1000 * median, min_step_ms=1000 * min(per_step),
                  epoch_s_1284_segments=math.ceil(MOSI_TRAIN_SEGMENTS / MOSI_SHAPE["batch"]) * median,
                  peak_gpu_mem_GiB=torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ablation", default="A6")
    ap.add_argument("--step", default="auto", choices=("auto", "eager", "sync_free", "cuda_graph"),
                    help="execution.step (auto = cuda_graph on one GPU, verified; reports what really ran)")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="bf16 = train.bf16 autocast")
    ap.add_argument("--optimizer", default="foreach", choices=("foreach", "fused"), help="execution.optimizer_impl")
    ap.add_argument("--scope", default="body", choices=("body", "step"), help="execution.cuda_graph_scope")
    ap.add_argument("--warmup", type=int, default=8, help="untimed steps (a graph: capture + 2 checked replays)")
    ap.add_argument("--steps", type=int, default=40, help="timed steps (blocks of 5)")
    ap.add_argument("--smoke", action="store_true", help="tiny DeBERTa on the CPU, a few steps: checks the script")
    args = ap.parse_args(argv)

    if args.smoke:
        device, args.warmup, args.steps = "cpu", min(args.warmup, 2), min(args.steps, 5)
    elif not torch.cuda.is_available():
        print("bench_gpu: no CUDA device (use --smoke to check the script on a CPU)", file=sys.stderr)
        return 2
    else:
        device = "cuda"
        set_tf32(False)
    record = {"kind": "bench_gpu_case", "ablation": args.ablation, "step": args.step, "precision": args.precision,
              "optimizer": args.optimizer, "scope": args.scope,
              "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "transformers": transformers.__version__,
              "backbone": "tiny deberta (smoke)" if args.smoke else "deberta-v3-base architecture, random weights",
              **MOSI_SHAPE, "warmup": args.warmup, "stage": "build"}
    code = 0
    try:
        run_case(args, device, record)
    except Exception as exc:  # the case's own failure, reported in its JSON (a failed capture: one line)
        record["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        code = 1
    print(json.dumps(record, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
