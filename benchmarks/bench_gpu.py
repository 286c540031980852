"""GPU benchmark of the training step: eager vs the sync-free step vs the CUDA-graph step (execution.step), for the
full model (A6) and the baseline (A0), on the paper's backbone (deberta-v3-base architecture, random weights, no
download) with MOSI-shaped batches (8 x 50, d_a 74, d_v 47).

    python benchmarks/bench_gpu.py            # on a CUDA machine; about 3 min on an H100/H200
    python benchmarks/bench_gpu.py --bf16     # the same with bf16 autocast
    python benchmarks/bench_gpu.py --smoke    # tiny config, CPU, eager and sync_free only: checks the script

Every case runs the REAL step of ``cpsl train`` (``cpsl.train.loop.make_stepper``: forward, Eq. 4, backward,
statistics, Eq. 5-6 + GE, norm, AdamW) on its own model, built from the same seed. After warm-up (which includes
the capture and the exactness verification of the CUDA graphs) the cases are timed in alternating blocks of 5
steps, so that drifting clocks hit all alike; CUDA-synchronised around each block, so a block's time includes
all its queued work. Reports steps/s, the median per-step time of the blocks, the epoch time for MOSI's 1,284
training segments (161 steps, validation excluded), the mode that really ran (a graph that failed its exactness
check falls back: then it says so), and each case's peak GPU memory (model, AdamW state, graphs' pools and one
step, measured while it was built and warmed up alone). Target: cuda_graph >= 3x eager steps/s for A6.
TF32 stays off as in ``cpsl train``. Prints JSON.
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

from cpsl.config import load_params  # noqa: E402
from cpsl.model.text_encoder import tiny_deberta_config  # noqa: E402

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


def build_case(params, ablation, mode, config, device, bf16, warmup, batches) -> tuple[Trainer, float | None]:
    """A warmed-up Trainer and its peak GPU memory (GiB) above what was allocated before it was built."""
    if device == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    trainer = Trainer(params, ablation, config, device, MOSI_SHAPE["acoustic_dim"], MOSI_SHAPE["visual_dim"],
                      bf16=bf16, pretrained=False, mode=mode)
    for i in range(warmup):
        trainer.step(batches[i % len(batches)])
    sync(device)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if device == "cuda" else None
    return trainer, peak


def time_block(trainer: Trainer, batches, start: int, n: int, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    for i in range(n):
        trainer.step(batches[(start + i) % len(batches)])
    sync(device)
    return (time.perf_counter() - t0) / n


def run(params, config, device, modes, bf16, warmup, steps, block=5) -> list[dict]:
    # several full batches (as the training loop gathers them on the device); the last epoch batch is not timed
    batches = [random_batch(config.vocab_size, device, MOSI_SHAPE["batch"], MOSI_SHAPE["seq_len"],
                            MOSI_SHAPE["acoustic_dim"], MOSI_SHAPE["visual_dim"], seed=s) for s in range(8)]
    rows = []
    for ablation in ("A0", "A6"):
        cases = {}
        for mode in modes:
            cases[mode] = build_case(params, ablation, mode, config, device, bf16, warmup, batches)
        per_step = {mode: [] for mode in modes}
        done = 0
        while done < steps:
            for mode, (trainer, _) in cases.items():
                per_step[mode].append(time_block(trainer, batches, done, block, device))
            done += block
        steps_per_epoch = math.ceil(MOSI_TRAIN_SEGMENTS / MOSI_SHAPE["batch"])
        eager_ms = 1000 * statistics.median(per_step["eager"])
        for mode, (trainer, peak) in cases.items():
            median = statistics.median(per_step[mode])
            rows.append({"ablation": ablation, "step": mode, "ran_as": trainer.stepper.describe(), "bf16": bf16,
                         "steps_per_s": 1.0 / median, "median_step_ms": 1000 * median,
                         "min_step_ms": 1000 * min(per_step[mode]), "speedup_vs_eager": eager_ms / (1000 * median),
                         "epoch_s_1284_segments": steps_per_epoch * median, "peak_gpu_mem_GiB": peak,
                         "params_M": sum(p.numel() for p in trainer.model.parameters()) / 1e6})
        del cases
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny DeBERTa on the CPU, a few steps: checks the script")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (train.bf16)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()

    params = copy.deepcopy(load_params(REPO / "params.yaml"))
    if args.smoke:
        device, config, warmup, steps, modes = "cpu", tiny_deberta_config(), 1, 5, ("eager", "sync_free")
        params["model"].update(intermediate_dim=8, fusion_dim=8)
    else:
        if not torch.cuda.is_available():
            sys.exit("bench_gpu: no CUDA device (use --smoke to check the script on a CPU)")
        device, config, warmup, steps = "cuda", deberta_v3_base_config(), args.warmup, args.steps
        modes = ("eager", "sync_free", "cuda_graph")
        set_tf32(False)
    rows = run(params, config, device, modes, args.bf16 and device == "cuda", warmup, steps)
    info = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
            "transformers": transformers.__version__,
            "backbone": "deberta-v3-base architecture, random weights" if not args.smoke else "tiny deberta (smoke)",
            **MOSI_SHAPE, "warmup": warmup, "timed_steps": steps}
    print(json.dumps({**info, "cases": rows}, indent=2))


if __name__ == "__main__":
    main()
