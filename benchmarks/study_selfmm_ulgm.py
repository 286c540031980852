"""Study (issue 14): what Self-MM's generated unimodal labels do under the paper's rule and the official code's.

The planted-signal cache of benchmarks/study_modulation.py (the label is recoverable from the VISUAL stream only;
text = filler words, acoustic = noise). SELFMM is trained with the real `train` and `evaluate` stages, with
`baselines.selfmm.mosi.ulgm_rule` = paper (Eq. 5-8 as printed: squared L2 / sqrt(d), zero labels in no class) and
= official (thuiar/Self-MM: plain L2, zero labels positive), over seeds. Per run: test Pearson r and MAE of the
prediction, and from the final ULGM state (state/last.pt) per subtask s: the share of training segments whose
generated label y_s has the sign of y_m, and mean |y_s - y_m|. An informative stream (visual) should keep labels
close to y_m; the noise streams (text, acoustic) have nothing to separate the classes with.

    python benchmarks/study_selfmm_ulgm.py --out /tmp/selfmm_ulgm.json [--seeds 0 1 2] [--epochs 10]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from study_modulation import tiny_text_model, write_caches

# Self-MM's own MOSI section, with a short schedule at the rates the planted tests use (tiny random text encoder)
SCHEDULE = {"batch_size": 8, "lr": 5e-4, "lr_new_modules": 5e-3, "warmup_ratio": 0.0}


def label_stats(run: Path) -> dict:
    import torch

    labels = torch.load(run / "state" / "last.pt", map_location="cpu", weights_only=True)["recipe"]["ulgm"]["labels"]
    y_m = labels[0]
    return {s: {"sign_agreement": float(((labels[i] > 0) == (y_m > 0)).float().mean()),
                "mean_abs_gap": float((labels[i] - y_m).abs().mean())} for i, s in enumerate("tav", start=1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file for the results")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from cpsl.config.schema import load_params, set_dotted, validate_params
    from cpsl.stages.evaluate import run_evaluate
    from cpsl.stages.train import run_train

    torch.set_num_threads(1)
    results: dict = {"settings": {"epochs": args.epochs, "seeds": args.seeds, **SCHEDULE,
                                  "cache": "planted visual signal (gain 1.0, noise 0.3), 192/48/96 segments"},
                     "runs": {}}
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        caches = write_caches(tmp)
        text = tiny_text_model(tmp / "text")
        for rule in ("paper", "official"):
            for seed in args.seeds:
                params = load_params(Path(__file__).resolve().parents[1] / "params.yaml", overrides=["dataset=mosi"])
                settings = {"text.model": text, "execution.device": "cpu", "eval.reliance_permutations": 0,
                            "baselines.selfmm.mosi.ulgm_rule": rule, "baselines.selfmm.mosi.train.epochs": args.epochs,
                            **{f"baselines.selfmm.mosi.train.{k}": v for k, v in SCHEDULE.items()}}
                for key, value in settings.items():
                    set_dotted(params, key, value)
                params = validate_params(params, "study params")
                run = tmp / f"{rule}-seed{seed}"
                assert run_train(params, seed=seed, ablation="SELFMM", data_path=caches["planted"], out_dir=run) == 0
                metrics = run_evaluate(params, run, data_path=caches["planted"])
                results["runs"][f"{rule}/{seed}"] = {"test": {k: metrics["test"][k] for k in ("corr", "mae")},
                                                     "labels": label_stats(run)}
                Path(args.out).write_text(json.dumps(results, indent=1))  # as the runs come
                print(f"{rule} seed {seed}: {results['runs'][f'{rule}/{seed}']} ({time.time() - start:.0f} s)",
                      file=sys.stderr, flush=True)
    results["wall_s"] = time.time() - start
    Path(args.out).write_text(json.dumps(results, indent=1))
    for rule in ("paper", "official"):
        runs = [results["runs"][f"{rule}/{s}"] for s in args.seeds]
        cells = [f"{sum(r['test']['corr'] for r in runs) / len(runs):.3f}"]
        for s in "tav":
            agree = sum(r["labels"][s]["sign_agreement"] for r in runs) / len(runs)
            gap = sum(r["labels"][s]["mean_abs_gap"] for r in runs) / len(runs)
            cells.append(f"{agree:.2f} / {gap:.2f}")
        print(f"| {rule} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
