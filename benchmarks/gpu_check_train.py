"""Device check (not a CI test): the real `train` and `evaluate` stages on a CUDA GPU, fp32 and bf16.

    python benchmarks/gpu_check_train.py      # on a CUDA machine, ~1 min
    python benchmarks/gpu_check_train.py --cpu --stub-dvclive   # checks the script itself on a CPU

CI has no GPU, so this is the one place the CUDA paths of ``fit`` (device placement, CUDA RNG state in
state/last.pt, validation on the GPU, bf16 autocast, the CUDA-graph step) and ``run_evaluate`` run end to end.
It trains A6 with a tiny DeBERTa on a small learnable synthetic cache (the fixtures of tests/train_helpers.py),
resumes a finished run (must be a no-op), evaluates, and checks that the GPU run learns and that best.pt loads
with weights_only=True. Each precision runs with execution.step eager and with execution.step auto (CUDA graphs,
verified at start; clipping on, train.grad_clip 1.0): the check wants auto to have really run on graphs, and
reports how far the two runs' weights and histories are apart (0 where the platform is deterministic). A run that
raises (e.g. a failed capture) is reported in its entry and the other runs go on. Prints JSON; exits non-zero
on any failed check.

The lent GPU image has no dvclive; when it is missing, a stand-in that writes nothing is installed for this
script only (DVCLive output is covered by the CPU tests).
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "src"))


def _stub_dvclive_if_missing(force: bool = False) -> bool:
    try:
        if force:
            raise ImportError
        import dvclive  # noqa: F401
        return False
    except ImportError:
        class Live:  # the subset of dvclive.Live the trainer calls, writing nothing
            def __init__(self, *a, **k): ...
            def __getattr__(self, name):
                return lambda *a, **k: None
        import importlib.machinery

        module = types.ModuleType("dvclive")
        module.__spec__ = importlib.machinery.ModuleSpec("dvclive", None)  # accelerate probes find_spec
        module.Live = Live
        sys.modules["dvclive"] = module
        return True


def _one_run(params: dict, run: Path, cache: Path, device: str) -> tuple[dict, tuple]:
    """Train (and rerun: a no-op), evaluate; the report entry and (best weights, history)."""
    from cpsl.stages.evaluate import run_evaluate
    from cpsl.stages.train import run_train

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    code = run_train(params, seed=0, ablation="A6", data_path=cache, out_dir=run)
    seconds = time.time() - t0
    again = run_train(params, seed=0, ablation="A6", data_path=cache, out_dir=run)  # finished: no-op
    best = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    metrics = run_evaluate(params, run_dir=run, data_path=cache)
    test = metrics["test"] if isinstance(metrics, dict) and "test" in metrics else \
        json.loads((run / "metrics.json").read_text())["test"]
    summary = json.loads((run / "train_summary.json").read_text())
    mode, bf16 = params["execution"]["step"], params["train"]["bf16"]
    entry = {"bf16": bf16, "step": mode, "ran_as": summary["step_mode"], "exit": code,
             "rerun_exit": again, "seconds": round(seconds, 1), "best_epoch": best["epoch"],
             "valid": best["valid"], "test_corr": test.get("corr"), "test_mae": test.get("mae"),
             "peak_mem_MiB": round(torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else None}
    entry["ok"] = code == 0 and again == 0 and (test.get("corr") or 0) > 0.3
    if mode == "auto" and device == "cuda":
        entry["ok"] &= summary["step_mode"] == "cuda_graph"
    return entry, (best["model"], (run / "history.csv").read_text())


def main() -> int:
    device = "cpu" if "--cpu" in sys.argv else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_check_train: no CUDA device (use --cpu to check the script)", file=sys.stderr)
        return 2
    stubbed = _stub_dvclive_if_missing(force="--stub-dvclive" in sys.argv)
    from train_helpers import make_cache, small_params, tiny_text_model

    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "dvclive_stub": stubbed, "runs": []}
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        text = tiny_text_model(tmp / "tiny")
        cache = make_cache(tmp / "cache.h5", n_train=96, n_valid=32, n_test=32, learnable=True)
        finals = {}
        # eager first: a failed capture in an auto run (which stops that run) comes after the eager figures
        for mode in ("eager", "auto"):
            for bf16 in (False, True):
                params = small_params(text, **{"execution.device": device, "train.bf16": bf16, "train.epochs": 6,
                                               "train.lr": 3e-3, "execution.step": mode, "train.grad_clip": 1.0})
                try:
                    entry, finals[bf16, mode] = _one_run(params, tmp / f"A6-bf16{int(bf16)}-{mode}", cache, device)
                except Exception as exc:  # reported, not fatal: the other runs' results still come back
                    entry = {"bf16": bf16, "step": mode, "ran_as": "-", "ok": False,
                             "error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"}
                ok &= entry["ok"]
                report["runs"].append(entry)
        for bf16 in (False, True):
            if (bf16, "auto") in finals and (bf16, "eager") in finals:
                auto, eager = finals[bf16, "auto"], finals[bf16, "eager"]
                diffs = [(auto[0][k].double() - eager[0][k].double()).abs().max().item()
                         for k in auto[0] if auto[0][k].is_floating_point()]
                report["runs"].append({"bf16": bf16, "auto_vs_eager_best_weights_max_abs_diff": max(diffs),
                                       "histories_identical": auto[1] == eager[1]})
    report["ok"] = ok
    print(json.dumps(report, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
