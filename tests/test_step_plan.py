"""execution.step resolved once per run into a StepPlan (issue 23 item 4) that the loop and the step read."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_helpers import CPU, make_cache, small_params, tiny_text_model

from cpsl.runtime.runlock import LOCK_NAME
from cpsl.train import loop
from cpsl.train.distributed import DistContext
from cpsl.train.loop import RunSpec, StepPlan, fit, plan_step

# step_mode reads only the device type and the world size: a CUDA context needs no GPU here
ONE_GPU = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cuda", 0))
TWO_GPUS = DistContext(rank=0, local_rank=0, world_size=2, device=torch.device("cuda", 0))
EXECUTION = {"step": "auto", "cuda_graph_scope": "body", "optimizer_impl": "foreach"}


class Blocked:
    capture_blocker = "its step reads the host"


@pytest.mark.parametrize("step, ctx, mode", [
    ("auto", CPU, "eager"), ("auto", ONE_GPU, "cuda_graph"), ("auto", TWO_GPUS, "sync_free"),
    ("sync_free", CPU, "sync_free"), ("eager", ONE_GPU, "eager"), ("cuda_graph", ONE_GPU, "cuda_graph"),
])
def test_the_plan_resolves_execution_step_for_this_process(step, ctx, mode):
    plan = plan_step({**EXECUTION, "step": step, "optimizer_impl": "fused"}, ctx)
    assert plan == StepPlan(step, mode, "body", "fused")
    assert plan.strict == (step == "cuda_graph")
    with pytest.raises(AttributeError):
        plan.mode = "eager"  # frozen: resolved once, read everywhere


def test_the_optimizer_is_captured_only_in_a_step_scope_graph_the_recipe_allows():
    step_scope = {**EXECUTION, "cuda_graph_scope": "step"}
    assert plan_step(step_scope, ONE_GPU).optimizer_in_graph()
    assert not plan_step(step_scope, ONE_GPU).optimizer_in_graph(Blocked())
    assert not plan_step(EXECUTION, ONE_GPU).optimizer_in_graph()      # body scope
    assert not plan_step(step_scope, TWO_GPUS).optimizer_in_graph()    # sync_free: no graph
    assert not plan_step(step_scope, CPU).optimizer_in_graph()


def test_an_impossible_step_still_fails_before_any_work():
    with pytest.raises(ValueError, match="execution.step: cuda_graph needs one process on a CUDA device"):
        plan_step({**EXECUTION, "step": "cuda_graph"}, CPU)
    with pytest.raises(ValueError, match="cuda_graph needs one process"):
        plan_step({**EXECUTION, "step": "cuda_graph"}, TWO_GPUS)


def test_a_training_run_resolves_execution_step_once(tmp_path: Path, monkeypatch):
    """The loop used to resolve it three times (and read it a fourth); now one plan serves the whole run."""
    calls = []
    real = loop.step_mode

    def counting(configured, ctx):
        calls.append(configured)
        return real(configured, ctx)

    monkeypatch.setattr(loop, "step_mode", counting)
    text = tiny_text_model(tmp_path / "text")
    cache = make_cache(tmp_path / "cache.h5", n_train=8, n_valid=8)
    params = small_params(text, **{"train.epochs": 1, "execution.step": "sync_free"})
    result = fit(RunSpec(params, "A6", 0, cache, tmp_path / "run", text), CPU)
    assert result.exit_code == loop.EXIT_OK
    assert calls == ["sync_free"]


def test_cuda_graph_on_a_cpu_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, capsys):
    """Was a ValueError traceback from inside the run (the plan is resolved there, before any work)."""
    from train_helpers import write_params

    from cpsl import cli

    text = tiny_text_model(tmp_path / "text")
    cache = make_cache(tmp_path / "cache.h5", n_train=8, n_valid=8)
    params = write_params(tmp_path / "params.yaml", small_params(text, **{"execution.step": "cuda_graph"}))
    run = tmp_path / "run"
    code = cli.main(["train", "--params", str(params), "--seed", "0", "--data", str(cache), "--out", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == ("cpsl train: invalid params: execution.step: cuda_graph needs one process on a CUDA device "
                       "(this one: cpu, 1 process(es)); use auto, sync_free or eager")
    assert not any("Traceback" in line for line in err)
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # the run folder's lock, no output
