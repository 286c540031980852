"""Issue 23: adding a fifth baseline is one folder + one registry line + its params section. A toy baseline in a
temporary folder (a package on ``sys.path``, outside cpsl) is registered with cpsl.baselines.registry.extend and
trained and evaluated through the stage entry points (run_train, run_evaluate) on a tiny cache: no module of the
package names it. In a subprocess: the rows and the params schema are made once, when cpsl.config.rows is imported."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from train_helpers import REPO

SPEC = '''"""The toy's row and params section (torch-free)."""
from cpsl.baselines.spec import BaselineSpec
from cpsl.config.param_types import number

SPEC = BaselineSpec(row="TOY", section="toy", label="Toy (a test)", paper_rows={},
                    hyper={"width": number(1, integer=True)})
'''

MODEL = '''"""The toy's model: mean text state + mean acoustic/visual features -> one linear layer each."""
from dataclasses import dataclass

import torch
from torch import nn

from cpsl.nn.heads import masked_mean
from cpsl.nn.losses import regression_loss
from cpsl.nn.tokens import word_positions


@dataclass
class ToyOutput:
    prediction: torch.Tensor


class Toy(nn.Module):
    def __init__(self, text_encoder, acoustic_dim, visual_dim, hp):
        super().__init__()
        self.text_encoder = text_encoder
        self.av = nn.Sequential(nn.Linear(acoustic_dim + visual_dim, hp["width"]), nn.Tanh())
        self.out = nn.Linear(text_encoder.config.hidden_size + hp["width"], 1)

    def forward(self, input_ids, attention_mask, acoustic, visual):
        mask = attention_mask.bool()
        text = masked_mean(self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state,
                           mask)
        av = self.av(masked_mean(torch.cat([acoustic, visual], -1).float(), word_positions(mask)))
        return ToyOutput(self.out(torch.cat([text, av], -1)).squeeze(-1))


def losses(out, label, hp):
    task = regression_loss(out.prediction, label, "l1")
    return {"total": task, "task": task}


MODEL = Toy
LOSSES = losses
'''

DRIVER = '''
import json
import sys
from pathlib import Path

sys.path[:0] = [sys.argv[1], sys.argv[2]]  # the toy's folder, tests/
from cpsl.baselines import registry
registry.extend("toy_baseline")  # the hook: before anything imports cpsl.config.rows

import train_helpers
import yaml
from train_helpers import make_cache, small_params, tiny_text_model

from cpsl.runtime import deps
from cpsl.config import rows
from cpsl.stages.evaluate import run_evaluate
from cpsl.stages.train import run_train

work = Path(sys.argv[3])
# its params section, in the project's params.yaml (here a copy of the repository's, for small_params to read)
section = {"width": 4, "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "lr_new_modules": None,
                                 "weight_decay": 0.0, "warmup_ratio": 0.1, "grad_clip": 1.0}}
raw = yaml.safe_load((train_helpers.REPO / "params.yaml").read_text())
raw["baselines"]["toy"] = {"mosi": section, "mosei": section}
(work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
train_helpers.REPO = work
params = small_params(tiny_text_model(work / "text"), ablations=["TOY"])
cache = make_cache(work / "cache.h5", n_train=16, n_valid=8, learnable=True)
run = work / "TOY-seed0"
code = run_train(params, seed=0, ablation="TOY", data_path=cache, out_dir=run)
metrics = run_evaluate(params, run, data_path=cache)
print(json.dumps({"train_exit": code, "rows": list(rows.BASELINE_IDS), "mae": metrics["test"]["mae"],
                  "files": sorted(p.name for p in run.iterdir()), "own_code": deps.row_own_files("TOY"),
                  "run_params_sections": sorted(rows.run_params(params, "TOY")["baselines"])}))
'''


def test_a_baseline_from_a_temporary_folder_trains_and_evaluates_through_the_stages(tmp_path):
    package = tmp_path / "toys" / "toy_baseline"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""A toy baseline: one folder, found by its registry line."""\n')
    (package / "spec.py").write_text(SPEC)
    (package / "model.py").write_text(MODEL)  # no recipe.py: the default Recipe trains it
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "toys"), str(REPO / "tests"),
                           str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["train_exit"] == 0
    assert out["rows"][-1] == "TOY" and out["rows"][:4] == ["MAG", "ITHP", "MMIM", "SELFMM"]
    assert {"best.pt", "history.csv", "train_summary.json", "metrics.json", "predictions.csv"} <= set(out["files"])
    assert out["mae"] == out["mae"] and out["mae"] >= 0  # a number, not NaN
    assert out["run_params_sections"] == ["toy"]  # its runs read its own params section only
    assert out["own_code"] == []  # outside the package: no file of this repository is its code


def test_extending_after_the_rows_exist_is_refused():
    """The rows and the params schema are made once: a late registration would be silently ignored."""
    code = "import cpsl.config.rows\nfrom cpsl.baselines import registry\nregistry.extend('anything')\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode != 0 and "cpsl.config.rows is already imported; extend the registry first" in proc.stderr
