"""Hostile params and command lines (issue 10, cases 1-3 and 10): every one gives exit code 2 (or 1 for other
user-fixable input) and ONE line naming the key, never a traceback; `--debug` shows the traceback."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cpsl.cli import main
from cpsl.config import ParamsError, apply_overrides, load_params

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def params():
    return load_params(REPO / "params.yaml")


def _write(folder: Path, text: str | bytes) -> Path:
    path = folder / "params.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _set_in_file(key: str, value: str) -> str:
    """params.yaml as `dvc exp run -S key=value` writes it: the value as plain YAML text."""
    lines = (REPO / "params.yaml").read_text().splitlines()
    section, leaf = key.split(".")
    out, inside = [], False
    for line in lines:
        if not line.startswith(" "):
            inside = line.split(":")[0] == section
        elif inside and line.strip().startswith(f"{leaf}:"):
            indent = line[: len(line) - len(line.lstrip())]
            line = f"{indent}{leaf}: {value}"
        out.append(line)
    return "\n".join(out) + "\n"


def _run(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


# ---------------------------------------------------------------- case 1: 2e-05 is a number
@pytest.mark.parametrize("key, text, value", [
    ("train.lr", "2e-05", 2e-5), ("model.var_eps", "1e-06", 1e-6), ("gm.eps", "1e-08", 1e-8),
    ("train.lr", "3E-4", 3e-4), ("loss.recon", "1e0", 1.0),
])
def test_exponent_floats_in_params_file_are_numbers(tmp_path, key, text, value):
    loaded = load_params(_write(tmp_path, _set_in_file(key, text)))
    section, leaf = key.split(".")
    assert loaded[section][leaf] == value and isinstance(loaded[section][leaf], float)


@pytest.mark.parametrize("override, key, value", [
    ("train.lr=2e-5", ("train", "lr"), 2e-5), ("gm.eps=1e-9", ("gm", "eps"), 1e-9),
    ("model.var_eps=5e-07", ("model", "var_eps"), 5e-7),
])
def test_exponent_floats_in_overrides_are_numbers(params, override, key, value):
    assert apply_overrides(params, [override])[key[0]][key[1]] == value


# ---------------------------------------------------------------- case 2: nan / inf rejected, naming the key
@pytest.mark.parametrize("key", ["cp.eta", "gm.alpha", "train.lr", "loss.recon", "loss.stat", "model.beta",
                                 "model.var_eps", "gm.eps", "train.grad_clip", "train.warmup_ratio",
                                 "train.weight_decay", "execution.download.backoff_s"])
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_nonfinite_params_are_rejected_naming_the_key(params, key, value):
    with pytest.raises(ParamsError, match=rf"'{key}' must be a finite number"):
        apply_overrides(params, [f"{key}={value}"])


# ---------------------------------------------------------------- case 3: one line, exit 2, no traceback
@pytest.mark.parametrize("content, fragment", [
    ("- a\n- b\n", "must be a mapping"),
    ("42\n", "must be a mapping"),
    ("just a string\n", "must be a mapping"),
    (b"dataset: demo\ncp:\n  eta: 0.5 \xff\xfe\n", "not UTF-8"),
    ("cp: [unclosed\n", "not valid YAML"),
])
def test_malformed_params_file_is_one_line_exit_2(tmp_path, capsys, content, fragment):
    path = _write(tmp_path, content)
    code, err = _run(["prepare", "--params", str(path)], capsys)
    assert code == 2
    assert fragment in err and str(path) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["prepare", "--set", "cp.eta.x=1"], "'cp.eta' is a value, not a section"),
    (["prepare", "--set", "cp.eta=["], "value is not valid YAML"),
    (["prepare", "--set", "cp..eta=1"], "empty part"),
    (["prepare", "--set", "cp.eta=.nan"], "'cp.eta' must be a finite number"),
    (["train", "--seed", "0", "--ablation", "Z9"], "--ablation 'Z9' is not a Table 2 ID"),
    (["train", "--seed", str(2**64 + 5)], "out of range"),
    (["train", "--seed", "-1"], "out of range"),
    (["prepare", "--set", f"train.seeds=[0, {2**64}]"], "'train.seeds' must be"),
])
def test_bad_arguments_are_one_line_exit_2(tmp_path, capsys, argv, fragment):
    path = _write(tmp_path, (REPO / "params.yaml").read_text())
    code, err = _run([*argv, "--params", str(path)], capsys)
    assert code == 2, err
    assert fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


def test_debug_flag_shows_the_traceback(tmp_path):
    path = _write(tmp_path, "- a\n")
    proc = subprocess.run([sys.executable, "-m", "cpsl.cli", "prepare", "--params", str(path), "--debug"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ParamsError" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "cpsl.cli", "prepare", "--params", str(path)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- case 10: project root = params folder
def test_running_from_a_subfolder_writes_under_the_params_folder(tmp_path, monkeypatch, capsys):
    _write(tmp_path, (REPO / "params.yaml").read_text())
    sub = tmp_path / "src"
    sub.mkdir()
    monkeypatch.chdir(sub)
    assert main(["prepare", "--params", "../params.yaml", "--set", "demo.videos=6"]) == 0
    assert (tmp_path / "data" / "raw" / "demo" / "manifest.json").is_file()
    assert not (sub / "data").exists()
    assert Path.cwd() == sub  # main() restores the caller's folder


def test_missing_params_file_hint_names_the_project_root(tmp_path, capsys):
    code, err = _run(["prepare", "--params", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "project root is the folder of that file" in err
    assert "run from the repository root" not in err


def test_paper_defaults_survive_the_float_resolver(params):
    assert params["train"]["lr"] == 1e-5 and params["model"]["var_eps"] == 1e-6 and params["gm"]["eps"] == 1e-8
    assert not any(isinstance(v, float) and math.isnan(v) for v in params["loss"].values())


# ---------------------------------------------------------------- issue 16, item 6: CPSL_* environment variables
@pytest.mark.parametrize("name, value, fragment", [
    ("CPSL_GPU_COUNT", "abc", "CPSL_GPU_COUNT='abc': must be an integer in [0, 4096]"),
    ("CPSL_GPU_COUNT", "-1", "CPSL_GPU_COUNT='-1': must be an integer in [0, 4096]"),
    ("CPSL_GPU_WAIT_S", "soon", "CPSL_GPU_WAIT_S='soon': must be a number of seconds >= 0"),
    ("CPSL_GPU_WAIT_S", "nan", "CPSL_GPU_WAIT_S='nan': must be a number of seconds >= 0"),
    ("CPSL_GPU_SLOTS", "0", "CPSL_GPU_SLOTS='0': must be an integer in [1, 1024]"),
    ("CPSL_GPU_LEASE", "no", "CPSL_GPU_LEASE='no': must be 0 or 1"),
    ("CPSL_GPU_SLOT", "4", "environment variable CPSL_GPU_SLOT is not one cpsl reads (a typo?)"),
])
def test_bad_environment_variables_are_one_line_exit_2(tmp_path, capsys, monkeypatch, name, value, fragment):
    path = _write(tmp_path, (REPO / "params.yaml").read_text())
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # so that train would read the GPU variables
    monkeypatch.setenv("CPSL_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv(name, value)
    code, err = _run(["train", "--ablation", "A6", "--seed", "0", "--params", str(path)], capsys)
    assert code == 2, err
    assert err.startswith("cpsl train: invalid environment: ") and fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "results").exists() and not (tmp_path / "locks").exists()


def test_the_snakefile_checks_the_environment_before_any_job(tmp_path):
    from project_copy import copy_project

    work = copy_project(tmp_path / "p", ("Snakefile", "params.yaml", "workflow", "src"))
    proc = subprocess.run(["snakemake", "-n", "--cores", "1"], cwd=work, capture_output=True, text=True,
                          env={**os.environ, "CPSL_GPU_COUNT": "abc", "PYTHONPATH": str(work / "src")})
    assert proc.returncode != 0 and "CPSL_GPU_COUNT='abc': must be an integer in [0, 4096]" in proc.stdout + proc.stderr
