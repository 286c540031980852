"""Study (issue 25, item 3): can SL with GM collapse without CP (A5), and does CP rescue it (A6)?

The paper's explanation of A5's collapse: "the dominant modality's gradient pressure interferes with the
moment-matching objective". The only difference between A5 and A6 is Eq. 6: when the better a/v stream also has the
larger mean gradient norm, its coefficient c (already <= 1 - tanh(alpha) = 0.24 by Eq. 5 as written) is halved
(eta = 0.5). So the collapse needs a setting where (i) one stream dominates (better unimodal MAE AND larger gradient
norm, so Eq. 6 fires), and (ii) the size of its encoder's gradient matters to the update.

Planted data (cpsl.data.planted): the label in a strong, wide visual stream (the dominant one: lower MAE, larger
gradient norm) and a weak, noisy acoustic stream; the text carries no polarity, so the prediction rests on the a/v
path (a collapse of it shows in MAE/Corr). Tiny random DeBERTa, tiny AME/fusion (16), the real train and evaluate
stages. Per setting, A5 and A6 x seeds:

* ``paper``: the paper's loss weights, AdamW (the product's optimizer), new modules at 5e-3;
* ``sl_x100``: lambda_stat 10 (SL 100 x the paper's weight: SL's scale against the task loss);
* ``ge_modulated``: GE noise from the scaled gradient (gm.ge_noise: modulated), so the noise shrinks with c;
* ``sgd``: the same with plain SGD (momentum 0.9) instead of AdamW: a counterfactual where scaling a gradient
  scales the update (AdamW divides each parameter's update by its own gradient RMS, which makes a steady c a no-op);
* ``sgd_sl_x100``: both;
* ``sgd_x50`` ... ``sgd_hotter``: SGD at 50 ... 1000 x AdamW's rates: the stability edge, where a step that follows
  the gradient's size overshoots (if CP rescues anything by halving c, it is there);
* ``adamw_hot``: AdamW with the new modules at 5e-2 (10 x).

Records per run: test MAE / Corr, c_a / c_v / conflicts (window means), loss spikes (train/total > 2 x the previous
epoch's), collapse-guard stops; per setting: A6 - A5 paired over seeds. Results: <out>/study_collapse.json.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/study_collapse.py --out docs/figures
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
D_A, D_V = 8, 24
SEQ_LEN = 12
SIZES = {"train": 256, "valid": 48, "test": 96}
BASE = {"dataset": "mosi", "model.intermediate_dim": 16, "model.fusion_dim": 16, "train.batch_size": 8,
        "train.lr": 1e-4, "train.lr_new_modules": 5e-3, "train.warmup_ratio": 0.1, "execution.device": "cpu",
        "execution.nproc": 1, "execution.eval_batch_size": 32, "eval.reliance_permutations": 1}
# setting -> (params overrides, optimizer, SGD's rates as a multiple of AdamW's: a plain-gradient step needs a
# larger rate to move at all)
SETTINGS = {
    "paper": ({}, "adamw", None),
    "sl_x100": ({"loss.stat": 10.0}, "adamw", None),
    "ge_modulated": ({"gm.ge_noise": "modulated"}, "adamw", None),
    "sgd": ({}, "sgd", 20.0),
    "sgd_sl_x100": ({"loss.stat": 10.0}, "sgd", 20.0),
    # the stability edge: where a step's size follows the gradient's (SGD), a rate high enough for the dominant
    # stream's scaled gradient (c <= 0.24) to overshoot, but not the CP-halved one, is where CP could rescue
    "sgd_x50": ({}, "sgd", 50.0),
    "sgd_x100": ({}, "sgd", 100.0),
    "sgd_hot": ({}, "sgd", 200.0),
    "sgd_hotter": ({}, "sgd", 1000.0),
    "sgd_sl_x100_hot": ({"loss.stat": 10.0}, "sgd", 200.0),
    # AdamW at a hot rate for the new modules (its step follows the rate, not the gradient)
    "adamw_hot": ({"train.lr_new_modules": 5e-2}, "adamw", None),
}


def planted_cache(path: Path, seed: int = 25) -> Path:
    """Visual: 8 of 24 dims carry 1.5 x label (noise 0.5): the dominant stream. Acoustic: 2 of 8 dims carry the
    label under noise 3 (weak). Text: filler words only."""
    from cpsl.data.planted import planted_split
    from cpsl.formats.cache import write_cache

    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in SIZES.items():
        vis = planted_split(rng, n, SEQ_LEN, (D_A, D_V), 30522, ("visual",), gain=1.5, n_signal_dims=8, noise=0.5,
                            prefix=f"{split}_")
        words = vis["acoustic"].any(-1, keepdims=True) | vis["visual"].any(-1, keepdims=True)
        acoustic = rng.normal(scale=3.0, size=vis["acoustic"].shape).astype(np.float32)
        acoustic[:, :, :2] += vis["label"][:, None, None]
        splits[split] = {**vis, "acoustic": (acoustic * words).astype(np.float32)}
    attrs = {"dataset": "mosi", "tokenizer": "tiny", "max_seq_len": SEQ_LEN, "acoustic_name": "a",
             "visual_name": "v", "acoustic_dim": D_A, "visual_dim": D_V, "raw_manifest_sha256": {"words": "0"}}
    write_cache(path, splits, attrs)
    return path


def tiny_text_model(folder: Path) -> str:
    import torch
    import transformers

    from cpsl.nn.text_encoder import tiny_deberta_config

    if not (folder / "config.json").is_file():
        torch.manual_seed(1234)
        transformers.AutoModel.from_config(tiny_deberta_config(30522)).save_pretrained(folder)
    return str(folder)


def study_params(text_model: str, epochs: int, overrides: dict) -> dict:
    from cpsl.config.schema import load_params, set_dotted, validate_params

    params = load_params(REPO / "params.yaml")
    for key, value in {**BASE, "text.model": text_model, "train.epochs": epochs, "gm.end_epoch": epochs - 1,
                       **overrides}.items():
        set_dotted(params, key, value)
    return validate_params(params, "study params")


class use_sgd:
    """Context: the trainer's AdamW replaced by SGD with momentum over the same two groups (rates x ``scale``)."""

    def __init__(self, scale: float):
        self.scale = scale

    def __enter__(self):
        scale = self.scale
        import torch

        from cpsl.train import recipe

        self.real = recipe.Recipe.optimizer

        def sgd(self_, tp, *args, **kwargs):
            groups = recipe.text_and_new_groups(self_.model, tp)
            for g in groups:
                g["lr"] *= scale
            return torch.optim.SGD(groups, lr=tp["lr"] * scale, momentum=0.9)

        recipe.Recipe.optimizer = sgd
        return self

    def __exit__(self, *exc):
        from cpsl.train import recipe

        recipe.Recipe.optimizer = self.real


def run_one(params: dict, ablation: str, seed: int, cache: Path, run: Path, sgd_scale: float | None) -> dict:
    import contextlib

    from study_table2 import loss_spikes

    from cpsl.formats.run_folder import COLLAPSE_FILE, read_history
    from cpsl.stages.evaluate import run_evaluate
    from cpsl.stages.train import run_train

    start = time.time()
    with use_sgd(sgd_scale) if sgd_scale else contextlib.nullcontext():
        code = run_train(params, seed=seed, ablation=ablation, data_path=cache, out_dir=run)
    hist = read_history(run / "history.csv") if (run / "history.csv").is_file() else []
    row = {"exit_code": code, "collapse_guard_stop": (run / COLLAPSE_FILE).is_file(), "epochs_run": len(hist),
           "loss_spikes": loss_spikes(hist), "train_total": [h.get("train/total") for h in hist],
           "train_stat": [h.get("train/stat") for h in hist], "valid_mae": [h.get("valid/mae") for h in hist]}
    for key in ("gm/c_a", "gm/c_v", "gm/conflicts", "gm/g_a", "gm/g_v", "gm/mae_a", "gm/mae_v"):
        vals = [h.get(key) for h in hist if h.get(key) is not None and math.isfinite(h.get(key))]
        row[key] = float(np.mean(vals)) if vals else None
    if row["collapse_guard_stop"]:
        record = json.loads((run / COLLAPSE_FILE).read_text())
        row["stopped_at"] = record.get("global_step")
        row["stopped_because"] = record.get("what")
    if code == 0:
        metrics = run_evaluate(params, run, data_path=cache)
        row["test"] = {k: metrics["test"][k] for k in ("mae", "corr", "acc2_nonzero")}
        row["reliance_visual_dmae"] = ((metrics.get("reliance") or {}).get("visual") or {}).get("mae")
    row["wall_s"] = time.time() - start
    return row


COLLAPSE_CORR = 0.5  # a run "collapsed": stopped by the guard, or test Corr below this (stable runs: >= 0.85)


def collapsed(r: dict) -> bool:
    return r["collapse_guard_stop"] or ("test" in r and r["test"]["corr"] < COLLAPSE_CORR)


def summarise(runs: list[dict], pair: tuple[str, str] = ("A5", "A6")) -> dict:
    """Per setting: each row of ``pair`` over its seeds, "<b>_minus_<a>_mae" paired by seed, and collapses."""
    a, b = pair
    out = {}
    for setting in dict.fromkeys(r["setting"] for r in runs):
        entry = {}
        for ablation in pair:
            every = [r for r in runs if r["setting"] == setting and r["ablation"] == ablation]
            rs = [r for r in every if "test" in r]
            if not rs:  # every run stopped by the collapse guard (or failed): say so
                entry[ablation] = {"runs": len(every), "collapse_guard_stops": sum(r["collapse_guard_stop"]
                                                                                   for r in every),
                                   "stopped_at_global_step": [r.get("stopped_at") for r in every]}
                continue
            entry[ablation] = {k: [float(np.mean([r["test"][k] for r in rs])),
                                   float(np.std([r["test"][k] for r in rs], ddof=1)) if len(rs) > 1 else None]
                               for k in ("mae", "corr")}
            entry[ablation].update(
                seeds=[r["seed"] for r in rs], c_a=float(np.mean([r["gm/c_a"] for r in rs])),
                c_v=float(np.mean([r["gm/c_v"] for r in rs])),
                conflicts_per_epoch=float(np.mean([r["gm/conflicts"] for r in rs])),
                loss_spikes=sum(len(r["loss_spikes"]) for r in rs),
                collapse_guard_stops=sum(r["collapse_guard_stop"] for r in runs
                                         if r["setting"] == setting and r["ablation"] == ablation))
        pairs = {}
        for r5 in (r for r in runs if r["setting"] == setting and r["ablation"] == a and "test" in r):
            r6 = next((r for r in runs if r["setting"] == setting and r["ablation"] == b and r["seed"] == r5["seed"]
                       and "test" in r), None)
            if r6:
                pairs[r5["seed"]] = r6["test"]["mae"] - r5["test"]["mae"]
        if pairs:
            diffs = np.array(list(pairs.values()))
            entry[f"{b}_minus_{a}_mae"] = {"per_seed": pairs, "mean": float(diffs.mean()),
                                          "second_better_seeds": int((diffs < 0).sum())}
            if len(diffs) > 1:
                from scipy import stats

                entry[f"{b}_minus_{a}_mae"]["t_test_p"] = float(stats.ttest_1samp(diffs, 0.0).pvalue)
        mine = [r for r in runs if r["setting"] == setting]
        by_seed = {(r["ablation"], r["seed"]): collapsed(r) for r in mine}
        seeds = sorted({r["seed"] for r in mine if (a, r["seed"]) in by_seed and (b, r["seed"]) in by_seed})
        entry["collapsed"] = {"rule": f"collapse-guard stop, or test Corr < {COLLAPSE_CORR}", "seeds": len(seeds),
                              a: sum(by_seed[(a, s)] for s in seeds), b: sum(by_seed[(b, s)] for s in seeds),
                              f"{a}_only": sum(by_seed[(a, s)] and not by_seed[(b, s)] for s in seeds),
                              f"{b}_only": sum(by_seed[(b, s)] and not by_seed[(a, s)] for s in seeds)}
        out[setting] = entry
    return out


def study_record(runs: list[dict], pair: tuple[str, str]) -> dict:
    return {"data": {"sizes": SIZES, "dims": [D_A, D_V], "seq_len": SEQ_LEN}, "base": BASE, "settings": SETTINGS,
            "pair": list(pair), "summary": summarise(runs, pair), "runs": runs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/figures")
    ap.add_argument("--work", default="/tmp/study_collapse")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    ap.add_argument("--tag", default="study_collapse")
    ap.add_argument("--summarise", action="store_true", help="only re-summarise the runs recorded under --tag")
    ap.add_argument("--pair", nargs=2, default=["A5", "A6"], help="the two rows compared (claim 3: B5 C1)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from cpsl.runtime.io_utils import write_json_atomic

    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cache = planted_cache(work / "planted.h5")
    text = tiny_text_model(work / "tiny_text")
    out = Path(args.out) / f"{args.tag}.json"
    # runs already recorded under this tag are kept and not rerun (settings added later extend the same record)
    runs = json.loads(out.read_text())["runs"] if out.is_file() else []
    done = {(r["setting"], r["ablation"], r["seed"], r["epochs"]) for r in runs}
    for r in runs:  # records written before the stop's step and reason were kept: read them from the run folder
        stop_file = work / "runs" / f"{r['setting']}-{r['ablation']}-e{r['epochs']}-seed{r['seed']}" / "collapse.json"
        if r["collapse_guard_stop"] and "stopped_at" not in r and stop_file.is_file():
            info = json.loads(stop_file.read_text())
            r.update(stopped_at=info.get("global_step"), stopped_because=info.get("what"))
    for setting in [] if args.summarise else args.settings:
        overrides, optimizer, sgd_scale = SETTINGS[setting]
        params = study_params(text, args.epochs, overrides)
        for seed in args.seeds:
            for ablation in args.pair:
                if (setting, ablation, seed, args.epochs) in done:
                    continue
                run = work / "runs" / f"{setting}-{ablation}-e{args.epochs}-seed{seed}"
                row = {"setting": setting, "optimizer": optimizer, "sgd_lr_scale": sgd_scale, "overrides": overrides,
                       "ablation": ablation, "seed": seed, "epochs": args.epochs,
                       **run_one(params, ablation, seed, cache, run, sgd_scale)}
                runs.append(row)
                print(f"{setting} {ablation} seed {seed}: {row.get('test')} c_v {row['gm/c_v']} "
                      f"conflicts {row['gm/conflicts']} ({row['wall_s']:.0f} s)", file=sys.stderr, flush=True)
                write_json_atomic(out, study_record(runs, tuple(args.pair)))
    write_json_atomic(out, study_record(runs, tuple(args.pair)))
    print(json.dumps(summarise(runs, tuple(args.pair)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
