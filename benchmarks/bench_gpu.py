"""GPU benchmark: the paper's backbone (deberta-v3-base architecture, random weights, no download) with the
full model (A6) and the baseline (A0), MOSI-shaped batches, with and without bf16 autocast.

    python benchmarks/bench_gpu.py            # on a CUDA machine; < 3 min on an H100/H200
    python benchmarks/bench_gpu.py --smoke    # tiny config, CPU, a few steps: checks the script runs

For each precision it builds A0 and A6 and runs the REAL training step (``cpsl.train.loop.train_step``) on an
8 x 50 batch (d_a 74, d_v 47): warm-up steps, then timed steps (CUDA-synchronised) in alternating A0/A6 blocks,
and reports steps/s, the median step time, the epoch time for MOSI's 1,284 training segments
(ceil(1284 / 8) = 161 steps, validation excluded), the time of the modulate_gradients call alone, and peak GPU
memory (A6 trained alone, fp32 and bf16). TF32 stays off as in ``cpsl train`` (one extra pair with TF32 on).
Prints JSON.
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


def modulation_ms(trainer: Trainer, batch: dict, n: int = 10) -> float:
    """Median time of the modulate_gradients call alone (after a real backward), synchronised."""
    from cpsl.model.modulation import modulate_gradients
    from cpsl.train.loop import noise_generator

    times = []
    for i in range(n):
        losses, _ = trainer.net(batch)
        trainer.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        sync(trainer)
        t0 = time.perf_counter()
        modulate_gradients(trainer.model.modality_encoders(), {"a": 1.0, "v": 1.2}, 0, trainer.params["gm"],
                           trainer.params["cp"], trainer.switches, noise_generator(0, i, trainer.ctx.device))
        sync(trainer)
        times.append(time.perf_counter() - t0)
    trainer.optimizer.zero_grad(set_to_none=True)
    return 1000 * statistics.median(times)


def sync(trainer: Trainer) -> None:
    if trainer.ctx.device.type == "cuda":
        torch.cuda.synchronize()


def run_pair(params, config, device, bf16, tf32, warmup, steps, block=5) -> list[dict]:
    """A0 and A6 at one precision, timed in alternating blocks so that drift hits both alike."""
    if device == "cuda":  # the training loop leaves TF32 off (float32 as written); one extra pair measures it
        set_tf32(tf32)
    batch = random_batch(config.vocab_size, device, MOSI_SHAPE["batch"], MOSI_SHAPE["seq_len"],
                         MOSI_SHAPE["acoustic_dim"], MOSI_SHAPE["visual_dim"])
    trainers = {ab: Trainer(params, ab, config, device, MOSI_SHAPE["acoustic_dim"], MOSI_SHAPE["visual_dim"],
                            bf16=bf16, pretrained=False) for ab in ("A0", "A6")}
    peak = {}
    for ab, trainer in trainers.items():
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.timed_steps(batch, warmup)
        if device == "cuda":
            peak[ab] = torch.cuda.max_memory_allocated() / 2**30  # both models resident: an upper bound
    times = {ab: [] for ab in trainers}
    while len(times["A6"]) < steps:
        for ab, trainer in trainers.items():
            times[ab] += trainer.timed_steps(batch, block)
    steps_per_epoch = math.ceil(MOSI_TRAIN_SEGMENTS / MOSI_SHAPE["batch"])
    out = []
    for ab, trainer in trainers.items():
        median = statistics.median(times[ab])
        row = {"ablation": ab, "bf16": bf16, "tf32": tf32, "steps_per_s": 1.0 / median,
               "median_step_ms": 1000 * median, "min_step_ms": 1000 * min(times[ab]),
               "epoch_s_1284_segments": steps_per_epoch * median,
               "modulate_gradients_ms": modulation_ms(trainer, batch),
               "params_M": sum(p.numel() for p in trainer.model.parameters()) / 1e6}
        if device == "cuda":
            row["peak_gpu_mem_GiB_both_models_resident"] = peak[ab]
        out.append(row)
    out.append({"overhead_A6_vs_A0": out[1]["median_step_ms"] / out[0]["median_step_ms"] - 1.0,
                "bf16": bf16, "tf32": tf32})
    del trainers
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def single_model_peak_gib(params, config, bf16) -> float:
    """Peak GPU memory of training A6 alone (model, AdamW state, activations of one step)."""
    set_tf32(False)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    trainer = Trainer(params, "A6", config, "cuda", MOSI_SHAPE["acoustic_dim"], MOSI_SHAPE["visual_dim"], bf16=bf16,
                      pretrained=False)
    batch = random_batch(config.vocab_size, "cuda")
    trainer.timed_steps(batch, 3)
    out = (torch.cuda.max_memory_allocated() - base) / 2**30
    del trainer
    torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny DeBERTa on the CPU, 2 steps: checks the script")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()

    params = copy.deepcopy(load_params(REPO / "params.yaml"))
    if args.smoke:
        device, config, warmup, steps = "cpu", tiny_deberta_config(), 1, 4
        params["model"].update(intermediate_dim=8, fusion_dim=8)
    else:
        if not torch.cuda.is_available():
            sys.exit("bench_gpu: no CUDA device (use --smoke to check the script on a CPU)")
        device, config, warmup, steps = "cuda", deberta_v3_base_config(), args.warmup, args.steps
    cases = run_pair(params, config, device, False, False, warmup, steps)
    cases += run_pair(params, config, device, True, False, warmup, steps)
    if device == "cuda":
        cases += run_pair(params, config, device, False, True, warmup, steps)
        cases.append({"peak_gpu_mem_GiB_A6_alone": {"fp32": single_model_peak_gib(params, config, False),
                                                     "bf16": single_model_peak_gib(params, config, True)}})
    info = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
            "transformers": transformers.__version__, "backbone": "deberta-v3-base architecture, random weights"
            if not args.smoke else "tiny deberta (smoke)", **MOSI_SHAPE, "warmup": warmup, "timed_steps": steps,
            }
    print(json.dumps({**info, "cases": cases}, indent=2))


if __name__ == "__main__":
    main()
