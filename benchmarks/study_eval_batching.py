"""Study (issue 7): how much do test metrics depend on how the test set is batched?

Takes one trained run folder (its best.pt), and evaluates its test split under R random batchings (a random
order, then consecutive batches), once with the paper's literal per-mini-batch min-max normalisation
(``model.eval_norm: batch``, each batch normalised with its own min/max) and once with the running statistics
kept during training (``running``, the default). Reports, per mode and batch size, the spread of the test
metrics over batchings and how far one segment's prediction moves.

    python benchmarks/study_eval_batching.py results/demo/A6-seed0 [--data data/processed/demo.h5] [--draws 20]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--data", default="data/processed/demo.h5")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()

    import torch

    from cpsl.formats.cache import read_split
    from cpsl.formats.run_folder import load_best
    from cpsl.metrics.scores import compute_metrics
    from cpsl.nn.inference import run_inference
    from cpsl.stages.evaluate import rebuild_model

    torch.set_num_threads(1)
    run = Path(args.run)
    ckpt = load_best(run)
    model = rebuild_model(ckpt, run / "best.pt").eval()
    test = read_split(args.data, "test")
    n = len(test["label"])
    rng = np.random.default_rng(0)
    orders = [rng.permutation(n) for _ in range(args.draws)]
    rows = {}
    for mode in ("batch", "running"):
        for norm in model.normalizers.values():
            norm.mode = mode
        for bs in args.batch_sizes:
            preds = []
            for order in orders:
                shuffled = {k: (np.asarray(v)[order] if k != "segment_id" else v) for k, v in test.items()}
                p = np.empty(n, dtype=np.float64)
                p[order] = run_inference(model, shuffled, bs, torch.device("cpu")).prediction
                preds.append(p)
            preds = np.stack(preds)
            metrics = [compute_metrics(p, test["label"]) for p in preds]
            def spread(k, metrics=metrics):
                return (float(np.min([m[k] for m in metrics])), float(np.max([m[k] for m in metrics])),
                        float(np.std([m[k] for m in metrics], ddof=1)))
            rows[f"{mode}/bs{bs}"] = {
                "segment_prediction_max_range": float((preds.max(0) - preds.min(0)).max()),
                "segment_prediction_mean_range": float((preds.max(0) - preds.min(0)).mean()),
                **{f"{k}_min_max_std": spread(k) for k in ("mae", "corr", "acc2_nonzero")},
            }
    result = {"run": str(run), "test_segments": n, "draws": args.draws, "results": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"{run}: {n} test segments, {args.draws} random batchings each")
    print("| mode | batch | max |pred range| per segment | mean range | MAE min-max | Corr min-max | Acc-2 min-max |")
    print("|---|---:|---:|---:|---|---|---|")
    for key, r in rows.items():
        mode, bs = key.split("/")
        def f(k, d, r=r):
            return f"{r[k][0]:.{d}f} - {r[k][1]:.{d}f}"
        print(f"| {mode} | {bs[2:]} | {r['segment_prediction_max_range']:.4f} "
              f"| {r['segment_prediction_mean_range']:.4f} "
              f"| {f('mae_min_max_std', 4)} | {f('corr_min_max_std', 4)} | {f('acc2_nonzero_min_max_std', 2)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
