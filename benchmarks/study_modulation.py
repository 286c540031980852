"""Study (issue 7): does gradient modulation as written keep an informative modality from being learnt?

A planted-signal cache (cpsl.data.planted): the label is recoverable from the VISUAL stream only (the text is
filler words, the acoustic stream noise). At the paper's schedule (30 epochs, modulation window 0-25, alpha 1,
eta 0.5) we train, with the real training loop and evaluate stage:

  A0            no modulation (the reference: how well the model can use the visual stream)
  zeroed        A0 on the same cache with a/v zeroed (what text alone gives: nothing)
  A6            the full model, Eq. 5/6 as written, GE noise with the UNmodulated std (official OGM-GE code)
  A6-modnoise   A6 with gm.ge_noise: modulated (GE noise scaled like the gradient)
  A6-shifted    A6 with gm.coefficient: shifted (1 - tanh(alpha * relu(ratio - 1)))
  A2            AME + GM, no GE, no CP (Eq. 5 alone)
  A3            AME + GM + GE (no CP)
  A0-1lr/A6-1lr A0 and A6 with ONE learning rate for every module (train.lr_new_modules: null)

and record per epoch the modulation coefficients c_a, c_v and the unimodal MAEs that drive Eq. 5.
The text encoder is a tiny random DeBERTa (CPU budget); the new modules train at train.lr_new_modules, as in
tests/test_planted_signal.py. Writes <out>/<tag>.json and <out>/<tag>.png (tag: study_modulation).

    python benchmarks/study_modulation.py --out docs/figures [--seeds 0 1 2] [--epochs 30]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
D_A, D_V, VOCAB, SEQ = 5, 4, 1200, 12

VARIANTS = {  # name -> (ablation, extra params, cache)
    "A0": ("A0", {}, "planted"),
    "zeroed": ("A0", {}, "zeroed"),
    "A6": ("A6", {}, "planted"),
    "A6-modnoise": ("A6", {"gm.ge_noise": "modulated"}, "planted"),
    "A6-shifted": ("A6", {"gm.coefficient": "shifted"}, "planted"),
    "A2": ("A2", {}, "planted"),
    "A3": ("A3", {}, "planted"),
    # one learning rate for every module (the paper read literally; 1e-4 here, as 1e-5 learns nothing at this size)
    "A0-1lr": ("A0", {"train.lr_new_modules": None}, "planted"),
    "A6-1lr": ("A6", {"train.lr_new_modules": None}, "planted"),
}


def base_params(text_model: str, epochs: int) -> dict:
    from cpsl.config.schema import load_params, set_dotted, validate_params

    params = load_params(REPO / "params.yaml", overrides=["dataset=mosi"])
    settings = {"text.model": text_model, "model.intermediate_dim": 16, "model.fusion_dim": 16,
                "train.epochs": epochs, "train.lr": 1e-4, "train.lr_new_modules": 5e-3, "execution.device": "cpu",
                "gm.start_epoch": 0, "gm.end_epoch": min(25, epochs - 1), "eval.reliance_permutations": 3}
    for key, value in settings.items():
        set_dotted(params, key, value)
    return validate_params(params, "study params")


def write_caches(folder: Path) -> dict[str, Path]:
    from cpsl.data.planted import planted_splits, zero_streams
    from cpsl.formats.cache import write_cache

    splits = planted_splits({"train": 192, "valid": 48, "test": 96}, SEQ, (D_A, D_V), VOCAB, signal=("visual",),
                            gain=1.0, noise=0.3, seed=5)
    attrs = {"dataset": "mosi", "tokenizer": "tiny", "max_seq_len": SEQ, "acoustic_name": "a", "visual_name": "v",
             "acoustic_dim": D_A, "visual_dim": D_V, "raw_manifest_sha256": {"words": "0"}}
    out = {"planted": folder / "planted.h5", "zeroed": folder / "zeroed.h5"}
    write_cache(out["planted"], splits, attrs)
    write_cache(out["zeroed"], zero_streams(splits), attrs)
    return out


def tiny_text_model(folder: Path) -> str:
    import torch
    import transformers

    from cpsl.nn.text_encoder import tiny_deberta_config

    config = tiny_deberta_config(30522)
    torch.manual_seed(1234)
    transformers.AutoModel.from_config(config).save_pretrained(folder)
    return str(folder)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/figures")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--tag", default="study_modulation", help="output file stem")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from cpsl.config.schema import set_dotted
    from cpsl.formats.run_folder import read_history
    from cpsl.stages.evaluate import run_evaluate
    from cpsl.stages.train import run_train

    torch.set_num_threads(1)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {"settings": {"epochs": args.epochs, "seeds": args.seeds, "window": [0, min(25, args.epochs - 1)],
                                  "cache": "planted visual signal (gain 1.0, noise 0.3), 192/48/96 segments",
                                  "text_model": "tiny random DeBERTa-v2 (2 layers, hidden 32)",
                                  "lr": {"text": 1e-4, "new_modules": 5e-3}}, "runs": {}}
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        caches = write_caches(tmp)
        text = tiny_text_model(tmp / "text")
        for name in args.variants:
            ablation, extra, cache = VARIANTS[name]
            for seed in args.seeds:
                params = base_params(text, args.epochs)
                for key, value in extra.items():
                    set_dotted(params, key, value)
                run = tmp / f"{name}-seed{seed}"
                code = run_train(params, seed=seed, ablation=ablation, data_path=caches[cache], out_dir=run)
                if code != 0:
                    results["runs"][f"{name}/{seed}"] = {"exit_code": code}
                    continue
                metrics = run_evaluate(params, run, data_path=caches[cache])
                hist = read_history(run / "history.csv")
                results["runs"][f"{name}/{seed}"] = {
                    "test": {k: metrics["test"][k] for k in ("mae", "corr", "acc2_nonzero")},
                    "reliance_visual_mae": metrics["reliance"].get("visual", {}).get("mae"),
                    "selected_epoch": metrics["selected_epoch"],
                    "history": {k: [row[k] for row in hist] for k in
                                ("gm/c_a", "gm/c_v", "gm/mae_a", "gm/mae_v", "gm/conflicts", "valid/corr")},
                }
                print(f"{name} seed {seed}: test corr {metrics['test']['corr']}, mae {metrics['test']['mae']:.3f} "
                      f"({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
    results["wall_s"] = time.time() - start
    results["summary"] = summarise(results["runs"], args.variants, args.seeds)
    (out_dir / f"{args.tag}.json").write_text(json.dumps(results, indent=1))
    plot(results, args.variants, out_dir / f"{args.tag}.png")
    for name, row in results["summary"].items():
        print(f"| {name} | {row['corr_mean']:.3f} ± {row['corr_std']:.3f} "
              f"| {row['mae_mean']:.3f} ± {row['mae_std']:.3f} "
              f"| {row['reliance_visual_mae_mean']:.3f} |")
    return 0


def summarise(runs: dict, variants, seeds) -> dict:
    out = {}
    for name in variants:
        rows = [runs.get(f"{name}/{s}") for s in seeds]
        rows = [r for r in rows if r and "test" in r]
        corr = np.array([r["test"]["corr"] if r["test"]["corr"] is not None else 0.0 for r in rows])
        mae = np.array([r["test"]["mae"] for r in rows])
        rel = np.array([r["reliance_visual_mae"] or 0.0 for r in rows])
        out[name] = {"n": len(rows), "corr_mean": float(corr.mean()),
                     "corr_std": float(corr.std(ddof=1)) if len(rows) > 1 else 0.0,
                     "mae_mean": float(mae.mean()), "mae_std": float(mae.std(ddof=1)) if len(rows) > 1 else 0.0,
                     "reliance_visual_mae_mean": float(rel.mean())}
    return out


def plot(results: dict, variants, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name in variants:
        runs = [r for k, r in results["runs"].items() if k.startswith(name + "/") and "history" in r]
        if not runs:
            continue
        for ax, key in zip(axes, ("gm/c_v", "gm/mae_v", "valid/corr")):
            y = np.nanmean(np.array([r["history"][key] for r in runs], dtype=float), axis=0)
            ax.plot(np.arange(len(y)), y, label=name)
    for ax, title in zip(axes, ("c_v (visual coefficient, epoch mean)", "unimodal MAE_v (train, epoch mean)",
                                "valid Pearson r of the main prediction")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
    axes[0].legend(fontsize=8)
    fig.suptitle("Planted visual signal: modulation variants (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
