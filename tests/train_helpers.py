"""Shared fixtures of the training tests: a tiny offline DeBERTa, tiny caches, small params.

Everything is random but seeded; nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers

from cpsl.config.schema import load_params, set_dotted, validate_params
from cpsl.formats.cache import write_cache
from cpsl.nn.text_encoder import tiny_deberta_config
from cpsl.train.distributed import DistContext

REPO = Path(__file__).resolve().parents[1]
VOCAB = 30522
D_A, D_V = 5, 4
# the single-process CPU context the in-process training tests run under
CPU = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def tiny_text_model(folder: Path) -> str:
    """Save a random tiny DeBERTa-v2 (no dropout, so runs can be compared exactly) and return its folder."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        config = tiny_deberta_config(VOCAB)
        config.hidden_dropout_prob = 0.0
        config.attention_probs_dropout_prob = 0.0
        torch.manual_seed(1234)
        transformers.AutoModel.from_config(config).save_pretrained(folder)
    return str(folder)


def _split(rng: np.random.Generator, n: int, seq_len: int, learnable: bool, prefix: str) -> dict:
    lengths = rng.integers(seq_len // 2, seq_len + 1, size=n)
    mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int8)
    input_ids = rng.integers(1000, VOCAB, size=(n, seq_len)) * mask
    acoustic = rng.normal(size=(n, seq_len, D_A)).astype(np.float32)
    visual = rng.normal(size=(n, seq_len, D_V)).astype(np.float32)
    if learnable:
        # sentiment carried by the text: each segment holds one of 6 "sentiment words" repeated, with its
        # polarity; the acoustic stream echoes the label on feature 0
        words = np.arange(100, 106)
        polarity = np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0])
        pick = rng.integers(0, len(words), size=n)
        label = (polarity[pick] + rng.normal(scale=0.3, size=n)).clip(-3, 3).astype(np.float32)
        positions = rng.random((n, seq_len)) < 0.5
        input_ids = np.where(positions & mask.astype(bool), words[pick][:, None], input_ids)
        acoustic[:, :, 0] += label[:, None]
    else:
        label = rng.uniform(-3, 3, size=n).astype(np.float32)
    input_ids[:, 0] = 1  # [CLS]-like first token
    return {"input_ids": input_ids.astype(np.int64), "attention_mask": mask, "acoustic": acoustic * mask[..., None],
            "visual": visual * mask[..., None], "label": label, "segment_id": [f"{prefix}{i}" for i in range(n)]}


def make_cache(path: Path, n_train: int = 16, n_valid: int = 8, n_test: int = 8, seq_len: int = 12,
               seed: int = 0, learnable: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    splits = {s: _split(rng, n, seq_len, learnable, f"{s}_") for s, n in
              (("train", n_train), ("valid", n_valid), ("test", n_test))}
    attrs = {"dataset": "mosi", "tokenizer": "tiny", "max_seq_len": seq_len, "acoustic_name": "a",
             "visual_name": "v", "acoustic_dim": D_A, "visual_dim": D_V, "raw_manifest_sha256": {"words": "0"}}
    write_cache(path, splits, attrs)
    return Path(path)


def shuffled_labels(splits: dict[str, dict], seed: int = 0) -> dict[str, dict]:
    """The same splits with the training and validation labels permuted across segments (the test split intact):
    the shuffled-label control of a planted-signal study, where no input predicts the label a model is fitted to."""
    rng = np.random.default_rng(seed)
    return {s: {**arrays, "label": arrays["label"][rng.permutation(len(arrays["label"]))]} if s != "test" else arrays
            for s, arrays in splits.items()}


def planted_caches(folder: Path, signal: tuple[str, ...] = ("visual",)) -> dict[str, Path]:
    """The planted-signal study's caches in ``folder``: {"planted": label in the ``signal`` streams (default the
    visual stream only; the others carry noise), "zeroed": the same with a/v zeroed, "shuffled": the same with the
    training and validation labels shuffled} (cpsl.data.planted; 192/32/48 segments, length 12)."""
    from cpsl.data.planted import planted_splits, zero_streams

    splits = planted_splits({"train": 192, "valid": 32, "test": 48}, 12, (D_A, D_V), VOCAB, signal=signal,
                            gain=1.0, noise=0.3, seed=5)
    attrs = {"dataset": "mosi", "tokenizer": "tiny", "max_seq_len": 12, "acoustic_name": "a", "visual_name": "v",
             "acoustic_dim": D_A, "visual_dim": D_V, "raw_manifest_sha256": {"words": "0"}}
    out = {}
    for name, data in (("planted", splits), ("zeroed", zero_streams(splits)), ("shuffled", shuffled_labels(splits))):
        out[name] = Path(folder) / f"{name}.h5"
        write_cache(out[name], data, attrs)
    return out


def small_params(text_model: str, **overrides) -> dict:
    """params.yaml with the dataset set to mosi (so text.model is used), a tiny model and short training."""
    params = load_params(REPO / "params.yaml")
    settings = {
        "dataset": "mosi", "text.model": text_model, "model.intermediate_dim": 8, "model.fusion_dim": 8,
        "train.epochs": 2, "train.batch_size": 8, "train.lr": 1e-3, "train.warmup_ratio": 0.1,
        "execution.device": "cpu", "execution.nproc": 1, "execution.eval_batch_size": 8,
        "train.lr_new_modules": None,  # one rate for every module, as these tests were calibrated
    }
    settings.update(overrides)
    for key, value in settings.items():
        set_dotted(params, key, value)
    return validate_params(params, "test params")


def schedule_settings(row_id: str, **schedule) -> dict:
    """``small_params`` overrides that give row ``row_id`` the training ``schedule`` (train keys: epochs, lr, ...):
    a baseline trains with its own section's schedule on MOSI (baselines.<section>.mosi.train.*), a CP+SL row with
    train.*."""
    from cpsl.config import rows

    spec = rows.row(row_id).baseline
    prefix = "train" if spec is None else f"{rows.BASELINES_SECTION}.{spec.section}.mosi.train"
    return {f"{prefix}.{key}": value for key, value in schedule.items()}


def write_params(path: Path, params: dict) -> Path:
    import yaml

    Path(path).write_text(yaml.safe_dump(params, sort_keys=False))
    return Path(path)


def load_model_states(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:5]}"


def _join_gloo(rank: int, world_size: int, port: int):
    """Inside a spawned process: join a local gloo group as ``rank`` (torch on one thread); returns the DistContext."""
    import os

    from cpsl.train.distributed import init_from_env

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    return init_from_env("cpu")


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    torch.save({"model": {k: v.detach().clone() for k, v in model.state_dict().items()}}, path)


def ddp_worker(rank: int, world_size: int, port: int, jobs: list, out_dir: str) -> None:
    """torch.multiprocessing entry point: join a gloo group, run each (name, params, ablation, data, run_dir)
    job with the real training loop, save this rank's final weights to out_dir/<name>-rank<r>.pt."""
    from cpsl.train.distributed import shutdown
    from cpsl.train.loop import RunSpec, fit

    ctx = _join_gloo(rank, world_size, port)
    try:
        for name, params, ablation, data_path, run_dir in jobs:
            result = fit(RunSpec(params, ablation, 0, Path(data_path), Path(run_dir), params["text"]["model"]), ctx)
            assert result.exit_code == 0, result.message
            _save_weights(result.model, Path(out_dir) / f"{name}-rank{rank}.pt")
    finally:
        shutdown(ctx)


def ddp_stop_worker(rank: int, world_size: int, port: int, params: dict, data_path: str, out_dir: str,
                    kill_at) -> None:
    """torch.multiprocessing entry point: one gloo rank of ``fit`` (A6) in out_dir/run; with ``kill_at`` =
    (rank, step), that rank sends itself SIGTERM just before that step of epoch 0. Saves this rank's exit code and,
    when finished, its final weights to out_dir."""
    import os
    import signal

    from cpsl.train import step as step_module
    from cpsl.train.distributed import shutdown
    from cpsl.train.loop import RunSpec, fit

    if kill_at is not None and kill_at[0] == rank:
        real_step = step_module.Stepper.step

        def step(self, batch, sums, *, epoch, step, **kwargs):
            if (epoch, step) == (0, kill_at[1]):
                os.kill(os.getpid(), signal.SIGTERM)  # handled by fit's StopFlag: a vote in this step's all-reduce
                kwargs["stop_requested"] = True
            return real_step(self, batch, sums, epoch=epoch, step=step, **kwargs)

        step_module.Stepper.step = step
    ctx = _join_gloo(rank, world_size, port)
    try:
        result = fit(RunSpec(params, "A6", 0, Path(data_path), Path(out_dir) / "run", params["text"]["model"]), ctx)
        torch.save({"exit_code": result.exit_code}, Path(out_dir) / f"exit-rank{rank}.pt")
        if result.exit_code == 0:
            _save_weights(result.model, Path(out_dir) / f"final-rank{rank}.pt")
    finally:
        shutdown(ctx)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GradRecorder:
    """Stands in for the optimizer: ``step()`` records (clones of) the gradients it would apply, per parameter."""

    def __init__(self, params):
        self.params = list(params)
        self.seen: list[list] = []

    def step(self):
        self.seen.append([None if p.grad is None else p.grad.detach().clone() for p in self.params])


class NoSchedule:
    def step(self):
        pass


def global_norm(grads: list) -> float:
    return float(torch.linalg.vector_norm(torch.stack([g.double().norm() for g in grads if g is not None])))


def assert_clipped(clipped: list, unclipped: list, clip: float) -> None:
    """``clipped`` is ``unclipped`` scaled down to global norm ``clip`` (torch's rule: clip / (norm + 1e-6)),
    every tensor by the same factor: the direction is unchanged."""
    norm = global_norm(unclipped)
    assert norm > clip, "the test needs gradients above the threshold"
    assert global_norm(clipped) <= clip * (1 + 1e-6), (global_norm(clipped), clip)
    factor = clip / (norm + 1e-6)
    assert [g is None for g in clipped] == [g is None for g in unclipped]
    for c, u in zip(clipped, unclipped):
        if u is not None:
            torch.testing.assert_close(c, u * factor, rtol=1e-5, atol=1e-12)


def ddp_clip_worker(rank: int, world_size: int, port: int, params: dict, data_path: str, out_dir: str) -> None:
    """torch.multiprocessing entry point: one step of A6 under gloo DDP (this rank's half of one batch), from the
    same initial state, for execution.step eager and sync_free and train.grad_clip as given in ``params`` and 0; saves
    the gradients the optimizer would apply to out_dir/clip-<mode>-<clip>-rank<r>.pt."""
    import copy

    from torch.nn.parallel import DistributedDataParallel

    from cpsl.config.ablations import switches_for
    from cpsl.model.network import build_model
    from cpsl.model.recipe import LossStep
    from cpsl.train.data import load_tensors
    from cpsl.train.distributed import shutdown
    from cpsl.train.step import EpochSums, StepBody, Stepper

    ctx = _join_gloo(rank, world_size, port)
    try:
        data = load_tensors(Path(data_path), "train")
        half = 8 // world_size
        batch = {k: v[rank * half:(rank + 1) * half] for k, v in data.items()}
        switches = switches_for("A6")
        for mode in ("eager", "sync_free"):
            for clip in (params["train"]["grad_clip"], 0.0):
                run_params = copy.deepcopy(params)
                run_params["train"]["grad_clip"] = clip
                torch.manual_seed(0)
                model = build_model(run_params, switches, D_A, D_V, run_params["text"]["model"])
                net = DistributedDataParallel(LossStep(model, run_params["loss"], switches),
                                              find_unused_parameters=True)
                body = StepBody(net, model, run_params, switches, ctx, use_bf16=False)
                recorder = GradRecorder(model.parameters())
                torch.manual_seed(100 + rank)  # per-rank dropout / AME noise, as fit seeds it
                Stepper(mode, body, recorder, NoSchedule(), ctx, seed=0).step(
                    batch, EpochSums(ctx.device), epoch=0, step=0, global_step=0, stop_requested=False)
                torch.save(recorder.seen[0], Path(out_dir) / f"clip-{mode}-{clip}-rank{rank}.pt")
    finally:
        shutdown(ctx)


# ------------------------------------------------------------------------------ real `cpsl` processes, killed
def cli_env() -> dict:
    """The environment of a `cpsl` child process: this process's thread count, nothing downloaded."""
    import os

    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1"}


def cli_completes(args: list[str]) -> str:
    """Run `cpsl <args>` to completion (exit 0 asserted); returns its stderr."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "cpsl.cli", *args], cwd=REPO, env=cli_env(), capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def kill_mid_epoch(args: list[str], run: Path) -> None:
    """Start a real `cpsl train` (``args``) writing run folder ``run``; SIGKILL it a moment after it saved a new
    state (so mid-epoch): no clean-up runs, whatever it left is what a rerun must cope with."""
    import signal
    import subprocess
    import sys
    import time

    from cpsl.formats import run_folder

    state = Path(run) / run_folder.STATE_FILE
    before = state.stat().st_mtime_ns if state.exists() else None
    proc = subprocess.Popen([sys.executable, "-m", "cpsl.cli", *args], cwd=REPO, env=cli_env(),
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if state.exists() and state.stat().st_mtime_ns != before:
                time.sleep(0.01)  # into the next epoch's steps
                break
            time.sleep(0.002)
        assert proc.poll() is None, "train finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
