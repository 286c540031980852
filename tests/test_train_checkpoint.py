"""Pieces of the training stage that need no training: RNG capture, weights_only files, history.csv, the
schedule, the batch plan (DDP partition and resume skipping), run identity and the torchrun re-launch."""
from __future__ import annotations

import math
import random
import sys

import numpy as np
import pytest
import torch
from train_helpers import REPO

from cpsl.config.schema import load_params
from cpsl.errors import PipelineError
from cpsl.formats import run_folder, run_identity
from cpsl.stages import train as stage
from cpsl.train import checkpoint as ckpt
from cpsl.train.data import BatchPlan
from cpsl.train.distributed import DistContext, torchrun_command
from cpsl.train.recipe import linear_warmup_decay
from cpsl.train.step import noise_generator


def _draws():
    return torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)]


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    run_folder.save_pt(tmp_path / "rng.pt", {"rng": ckpt.capture_rng()})
    expected = _draws()
    _draws()  # move every generator on
    ckpt.restore_rng(run_folder.load_pt(tmp_path / "rng.pt")["rng"])  # load_pt uses weights_only=True
    got = _draws()
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_history_csv_has_the_contract_header_and_round_trips(tmp_path):
    row = {key: 0.25 for key in run_folder.HISTORY_COLUMNS} | {"epoch": 0, "gm/conflicts": 3, "gm/ge_steps": 5,
                                                         "gm/g_a": math.nan}
    run_folder.write_history(tmp_path, [row, row | {"epoch": 1}])
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0].split(",") == list(run_folder.HISTORY_COLUMNS) and lines[0].startswith("epoch,train/total,")
    back = run_folder.read_history(tmp_path / "history.csv")
    assert [r["epoch"] for r in back] == [0, 1] and back[1]["gm/conflicts"] == 3 and back[0]["gm/ge_steps"] == 5
    assert {"gm/mae_a", "gm/mae_v"} <= set(run_folder.HISTORY_COLUMNS)  # the unimodal MAEs that drive Eq. 5
    assert math.isnan(back[0]["gm/g_a"]) and back[0]["valid/corr"] == 0.25


def test_linear_warmup_then_linear_decay():
    factor = linear_warmup_decay(total_steps=10, warmup_steps=2)
    assert [factor(s) for s in range(11)] == [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0]
    assert linear_warmup_decay(4, 0)(0) == 1.0


def test_batch_plan_partitions_the_epoch_over_ranks_and_resumes_by_skipping():
    plans = [BatchPlan(10, batch_per_rank=2, rank=r, world_size=2, seed=5) for r in range(2)]
    assert plans[0].steps_per_epoch == 3  # 10 samples -> 5 per rank -> batches 2, 2, 1
    seen = torch.cat([b for p in plans for b in p.batches(epoch=1)])
    assert sorted(seen.tolist()) == list(range(10))
    full = list(plans[0].batches(epoch=1))
    assert [b.tolist() for b in plans[0].batches(epoch=1, start_step=1)] == [b.tolist() for b in full[1:]]
    assert [b.tolist() for b in plans[0].batches(epoch=2)] != [b.tolist() for b in full]  # reshuffled per epoch


def test_ge_noise_generator_depends_on_seed_and_step_only():
    draw = lambda seed, step: torch.randn(4, generator=noise_generator(seed, step, torch.device("cpu")))  # noqa: E731
    assert torch.equal(draw(0, 7), draw(0, 7))
    assert not torch.equal(draw(0, 7), draw(0, 8)) and not torch.equal(draw(0, 7), draw(1, 7))


def _fingerprint(eta=0.5, ablation="A6", seed=0, sha256="a", code="c", seeds=(0, 1, 2)) -> str:
    params = load_params(REPO / "params.yaml")
    params["cp"]["eta"], params["train"]["seeds"] = eta, list(seeds)
    return run_identity.fingerprint(run_identity.identity(params, ablation, seed, {"sha256": sha256}, code))


def test_fingerprint_and_finished_summary(tmp_path):
    base = _fingerprint()
    assert base == _fingerprint(seeds=[0, 1, 2, 3])  # adding a seed leaves the other seeds' runs alone
    others = [_fingerprint(eta=0.3), _fingerprint(ablation="A5"), _fingerprint(seed=1),
              _fingerprint(sha256="b")]  # the cache's content, not its size and attributes
    assert base not in others
    # the code train runs is part of the run's identity: a state saved by other code is never resumed
    assert _fingerprint(code="other") != base
    run_folder.write_summary(tmp_path, {"fingerprint": base, "best_epoch": 2})
    assert run_folder.finished_summary(tmp_path, base) == (None, None)  # no best.pt yet
    run_folder.save_best(tmp_path, {"w": torch.ones(3)}, 2, {"valid/mae": 0.5}, {"fingerprint": base})
    (tmp_path / run_folder.HISTORY_FILE).write_text("epoch\n")
    (tmp_path / run_folder.DVCLIVE_DIR).mkdir()
    assert run_folder.finished_summary(tmp_path, base)[0]["best_epoch"] == 2
    assert run_folder.finished_summary(tmp_path, others[0]) == (None, None)
    # every declared output must be there: an engine deletes them before rerunning the stage
    for name in run_folder.TRAIN_OUTPUTS:
        target = tmp_path / name
        moved = target.rename(tmp_path / "aside")
        assert run_folder.finished_summary(tmp_path, base) == (None, None), name
        moved.rename(target)


def test_a_damaged_or_linked_best_pt_is_not_a_finished_run(tmp_path):
    """Issue 16, item 2: a best.pt that does not load, is a symbolic link, or belongs to another run makes a run
    that otherwise looks finished unfinished, and says why."""
    run_folder.write_summary(tmp_path, {"fingerprint": "f", "best_epoch": 2})
    (tmp_path / run_folder.HISTORY_FILE).write_text("epoch\n")
    (tmp_path / run_folder.DVCLIVE_DIR).mkdir()
    best = tmp_path / run_folder.BEST_FILE
    run_folder.save_best(tmp_path, {"w": torch.ones(1000)}, 2, {"valid/mae": 0.5}, {"fingerprint": "f"})
    assert run_folder.finished_summary(tmp_path, "f")[0] is not None
    intact = best.read_bytes()

    best.write_bytes(intact[:1000])  # truncated
    summary, why = run_folder.finished_summary(tmp_path, "f")
    assert summary is None and f"{best} cannot be loaded with weights_only=True" in why and "\n" not in why
    assert run_folder.best_record(tmp_path) is None

    best.unlink()
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    best.symlink_to(tmp_path / "notes.txt")
    why = f"{best} is a symbolic link (to {tmp_path / 'notes.txt'}), not a regular file"
    assert run_folder.finished_summary(tmp_path, "f") == (None, why)
    best.unlink()  # even a link to an intact copy of this run's own checkpoint: its target can change or vanish
    (tmp_path / "copy.pt").write_bytes(intact)
    best.symlink_to(tmp_path / "copy.pt")
    assert "is a symbolic link" in run_folder.finished_summary(tmp_path, "f")[1]
    assert run_folder.best_record(tmp_path) is None

    best.unlink()
    run_folder.save_best(tmp_path, {"w": torch.ones(3)}, 2, {"valid/mae": 0.5}, {"fingerprint": "other"})
    assert "was written by another run" in run_folder.finished_summary(tmp_path, "f")[1]


def test_nproc_above_one_relaunches_the_same_command_under_torchrun(tmp_path, monkeypatch):
    launched = {}
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(stage.distributed, "relaunch",
                        lambda n, args, pass_fds=(): launched.update(n=n, args=args) or 7)
    params = {"ablations": ["A6", "T0"], "dataset": "mosi", "execution": {"nproc": 2, "device": "cpu"}}
    code = stage.run_train(params, seed=1, data_path=tmp_path / "c.h5", out_dir=tmp_path / "run",
                           params_file="p.yaml", overrides=["cp.eta=0.3"])
    assert code == 7 and launched["n"] == 2
    assert launched["args"] == ["train", "--params", "p.yaml", "--seed", "1", "--ablation", "A6", "--data",
                                str(tmp_path / "c.h5"), "--out", str(tmp_path / "run"), "--set", "cp.eta=0.3"]
    cmd = torchrun_command(2, launched["args"])
    assert cmd[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert cmd[5:8] == ["-m", "cpsl.cli", "train"]


def test_best_checkpoint_loads_weights_only_with_its_meta(tmp_path):
    model = torch.nn.Linear(2, 1)
    meta = {"params": {"cp": {"eta": 0.5}, "data": {"mirror": None}}, "ablation": "A6", "seed": 0,
            "acoustic_dim": 5, "visual_dim": 4, "text_model": "x"}
    run_folder.save_best(tmp_path, ckpt.cpu_state_dict(model), 3, {"valid/mae": 0.5}, meta)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["epoch"] == 3 and best["meta"] == meta and torch.equal(best["model"]["weight"], model.weight)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporary file


def test_a_state_saved_by_another_number_of_processes_is_one_clear_error(tmp_path):
    """execution.nproc is no param (changing it reruns nothing), but an interrupted run can only continue with
    the world size that saved its per-rank RNG and sampler position: one line naming both, exit 1, not a
    traceback."""
    saved = {"fingerprint": "f", "world_size": 2, "best": None, "epoch": 1, "step_in_epoch": 3}
    one = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    with pytest.raises(PipelineError, match=r"written by 2 processes, this run has 1: resume with the same world "
                                            r"size \(execution.nproc 2\)"):
        ckpt._best_to_keep(saved, tmp_path, "f", one)
