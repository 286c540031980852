"""Kill anywhere, lose nothing: SIGKILL the align and the train stage at several points, rerun the same
command, and end with the outputs of an uninterrupted run (align: a bit-identical cache; train: equal weights
on CPU).

Kill points are deterministic: the stage runs in a process that SIGKILLs itself at the n-th atomic rename
(``os.replace``: the temporary is complete, the final file not yet replaced), right after the n-th rename, or at
the n-th HDF5 dataset it creates (mid-write); train is also killed at an arbitrary moment mid-epoch. SIGKILL
runs no clean-up: whatever the process left (temporaries, a state newer or older than best.pt) is what the
rerun must cope with.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import yaml
from fixtures_align import make_videos, write_raw
from train_helpers import (
    REPO,
    assert_same_tensors,
    cli_completes,
    cli_env,
    kill_mid_epoch,
    load_model_states,
    make_cache,
    small_params,
    tiny_text_model,
    write_params,
)

from cpsl.config.schema import load_params
from cpsl.formats import run_folder
from cpsl.train.checkpoint import load_state

# argv: point ("replace" | "replaced" | "dataset"), n, then the cpsl arguments
KILLER = r"""
import os, signal, sys
point, n = sys.argv[1], int(sys.argv[2])
calls = [0]
def hit():
    calls[0] += 1
    if calls[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
if point in ("replace", "replaced"):
    real_replace = os.replace
    def replace(*args, **kwargs):
        if point == "replace":
            hit()
        out = real_replace(*args, **kwargs)
        if point == "replaced":
            hit()
        return out
    os.replace = replace
else:
    import h5py
    real_create = h5py.Group.create_dataset
    def create_dataset(self, *args, **kwargs):
        hit()
        return real_create(self, *args, **kwargs)
    h5py.Group.create_dataset = create_dataset
from cpsl.cli import main
sys.exit(main(sys.argv[3:]))
"""


def killed_at(point: str, n: int, args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLER, point, str(n), *args], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, (
        f"not killed at {point} #{n} (exit {proc.returncode}): {proc.stderr[-2000:]}"
    )


def no_temporaries(folder: Path) -> None:
    left = [p for p in folder.rglob(".*.tmp")]
    assert not left, f"temporaries left: {left}"


# ------------------------------------------------------------------------------------------------------ align
def test_align_killed_anywhere_rerun_gives_the_identical_cache(tmp_path):
    params = load_params(REPO / "params.yaml")
    params["data"]["max_seq_len"] = 16  # the demo's offline MiniLM tokenizer
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    raw = write_raw(tmp_path / "raw", make_videos(n_videos=6, seed=3))

    def args(out):
        return ["align", "--params", str(params_file), "--raw", str(raw), "--out", str(out)]

    reference = tmp_path / "ref" / "demo.h5"
    cli_completes(args(reference))
    out = tmp_path / "out" / "demo.h5"
    report = out.with_name("demo.report.json")
    killed_at("dataset", 3, args(out))  # mid-write of the cache's temporary
    assert not out.exists()
    killed_at("replace", 1, args(out))  # the cache complete in its temporary, not renamed
    assert not out.exists()
    killed_at("replaced", 1, args(out))  # the cache in place, its report not yet written
    assert out.exists() and not report.exists()
    cli_completes(args(out))

    assert out.read_bytes() == reference.read_bytes()
    strip = lambda p: {k: v for k, v in json.loads(p.read_text()).items() if k not in ("seconds", "cache")}  # noqa: E731
    assert strip(report) == strip(reference.with_name("demo.report.json"))
    no_temporaries(out.parent)


# ------------------------------------------------------------------------------------------------------ train
def test_train_killed_anywhere_rerun_gives_the_same_weights(tmp_path):
    text = tiny_text_model(tmp_path / "text")
    cache = make_cache(tmp_path / "cache.h5", n_train=32, n_valid=8, learnable=True)  # so epoch 1 improves
    params = small_params(text, **{"train.epochs": 3, "train.batch_size": 4, "ablations": ["A6"]})
    params_file = write_params(tmp_path / "params.yaml", params)

    def args(out):
        return ["train", "--params", str(params_file), "--seed", "0", "--data", str(cache), "--out", str(out)]

    reference = tmp_path / "ref"
    cli_completes(args(reference))

    run = tmp_path / "run"
    # renames per epoch: best.pt (when it improves), history.csv, state/last.pt; each rerun resumes
    killed_at("replace", 2, args(run))  # epoch 0: best.pt written, history.csv complete but not in place
    killed_at("replaced", 2, args(run))  # history.csv in place, the state of epoch 0 not saved yet
    kill_mid_epoch(args(run), run)  # a few steps into an epoch, after a state was saved
    assert load_state(run / run_folder.STATE_FILE)["epoch"] == 1  # killed inside epoch 1
    killed_at("replace", 3, args(run))  # a state/last.pt complete in its temporary, not renamed
    # that rename was the state of epoch 1, after its improved best.pt: best.pt is newer than the state
    assert run_folder.best_record(run)["epoch"] == load_state(run / run_folder.STATE_FILE)["epoch"] == 1
    log = cli_completes(args(run))
    # resumed, not retrained: a best.pt newer than the state (written by the killed epoch) is adopted
    assert "resuming" in log and "from scratch" not in log

    for name in run_folder.TRAIN_OUTPUTS:
        assert (run / name).exists(), name
    assert_same_tensors(
        load_model_states(run / run_folder.BEST_FILE), load_model_states(reference / run_folder.BEST_FILE)
    )
    assert_same_tensors(
        load_model_states(run / run_folder.STATE_FILE), load_model_states(reference / run_folder.STATE_FILE)
    )
    assert run_folder.read_history(run / run_folder.HISTORY_FILE) == run_folder.read_history(
        reference / run_folder.HISTORY_FILE
    )
    no_temporaries(run)
