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
from cpsl.config.schema import ParamsError, apply_overrides, load_params

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


# ---------------------------------------------------------------- issue 21, item 6: nesting and duplicate keys
def _with_lines(extra: str) -> str:
    """params.yaml with ``extra`` appended; returns the text."""
    return (REPO / "params.yaml").read_text() + extra


_LAST = len((REPO / "params.yaml").read_text().splitlines())  # params.yaml's line count: extra lines follow it
_CP_LINE = next(i for i, line in enumerate((REPO / "params.yaml").read_text().splitlines(), 1)
                if line.startswith("cp:"))
_DEEP_BLOCK = "".join(f"{'  ' * i}k{i}:\n" for i in range(200)) + "  " * 200 + "v: 1\n"


@pytest.mark.parametrize("extra, fragment", [
    ("extra: " + "[" * 100_000 + "\n", f"nested deeper than 32 levels (line {_LAST + 1}, column 39)"),
    ("extra: " + "{a: " * 50_000 + "\n", f"nested deeper than 32 levels (line {_LAST + 1}, column "),
    (_DEEP_BLOCK, f"nested deeper than 32 levels (line {_LAST + 32}, column 63)"),
    ("cp:\n  eta: 0.9\n", f"duplicate key 'cp' (lines {_CP_LINE} and {_LAST + 1})"),
    ("other:\n  a: 1\n  b: 2\n  a: 3\n", f"duplicate key 'other.a' (lines {_LAST + 2} and {_LAST + 4})"),
    ("other: [{x: 1, x: 2}]\n", f"duplicate key 'other[0].x' (lines {_LAST + 1} and {_LAST + 1})"),
], ids=["100k [", "50k {", "200 block levels", "top-level key twice", "nested key twice", "flow key twice"])
def test_deep_nesting_and_duplicate_keys_are_one_line_exit_2(tmp_path, capsys, extra, fragment):
    """Was: a 3,001-line RecursionError; a duplicate key taken last-wins (DVC refuses the same file)."""
    path = _write(tmp_path, _with_lines(extra))
    code, err = _run(["prepare", "--params", str(path)], capsys)
    assert code == 2, err
    assert err.startswith(f"cpsl prepare: invalid params: {path}: {fragment}")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_duplicate_key_inside_an_override_value_is_refused(tmp_path, capsys):
    path = _write(tmp_path, (REPO / "params.yaml").read_text())
    code, err = _run(["prepare", "--params", str(path), "--set", "demo.train={epochs: 2, epochs: 3}"], capsys)
    assert code == 2 and "duplicate key 'epochs' (lines 1 and 1)" in err and len(err.strip().splitlines()) == 1


def test_a_merge_key_is_no_duplicate(tmp_path):
    """YAML merge keys (`<<`) repeat keys on purpose; the explicit one wins, as before."""
    text = _with_lines("anchors:\n  base: &b {x: 1, y: 2}\n  use: {<<: *b, x: 3}\n")
    from cpsl.config.schema import parse_yaml

    assert parse_yaml(text)["anchors"]["use"] == {"x": 3, "y": 2}


# ---------------------------------------------------------------- issue 21, item 6: the same answers from Snakemake
def _snakemake_n(tmp_path, params_text=None, config=()):
    from project_copy import copy_project

    work = copy_project(tmp_path / "p", ("Snakefile", "params.yaml", "workflow", "src"))
    if params_text is not None:
        (work / "params.yaml").write_text(params_text)
    argv = ["snakemake", "-n", "--cores", "1"] + (["--config", *config] if config else [])
    proc = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(work / "src")})
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("extra, fragment", [
    ("extra: " + "[" * 100_000 + "\n", f"params.yaml: nested deeper than 32 levels (line {_LAST + 1}, column 39)"),
    ("cp:\n  eta: 0.9\n", f"params.yaml: duplicate key 'cp' (lines {_CP_LINE} and {_LAST + 1})"),
], ids=["100k [", "duplicate key"])
def test_snakemake_gives_cpsl_s_answer_on_the_params_file(tmp_path, extra, fragment):
    """Was: 990 lines of RecursionError from Snakemake's own loader; a duplicate key taken last-wins."""
    code, out = _snakemake_n(tmp_path, _with_lines(extra))
    assert code != 0 and fragment in out, out[-3000:]
    assert "RecursionError" not in out and len(out.splitlines()) < 20


@pytest.mark.parametrize("config, fragment", [
    (["grid=maybe"], "--config grid=maybe: must be true or false"),
    (["table1=yes"], "--config table1=yes: must be true or false"),
    (["grid=1"], "--config grid=1: must be true or false"),
    (["foo=1"], "--config foo: not a workflow switch; the switches are grid (…), table1 (…); params are set in "
                "params.yaml"),
    (["dataset=mosi"], "--config dataset: a param, not a workflow switch (grid, table1): edit params.yaml"),
], ids=["maybe", "yes", "1", "unknown key", "a param"])
def test_snakemake_config_values_are_checked(tmp_path, config, fragment):
    """Was: `grid=maybe` silently false; `foo=1` called a param."""
    code, out = _snakemake_n(tmp_path, config=config)
    assert code != 0 and fragment.split("(…)")[0] in out, out[-3000:]
    if "(…)" in fragment:
        assert "table1 (train and report T0" in out and "params are set in params.yaml" in out


def test_snakemake_switches_true_and_false():
    from cpsl.config.workflow_config import switch_value, workflow_config

    assert [switch_value("grid", v) for v in (True, False, "true", "TRUE", "False")] == [True, False, True, True,
                                                                                          False]
    got = workflow_config({"grid": "true", "dataset": "demo"}, str(REPO / "params.yaml"))
    assert got["grid"] is True and got["table1"] is False and got["train"]["seeds"] == load_params(
        REPO / "params.yaml")["train"]["seeds"]


# ---------------------------------------------------------------- issue 21, item 6: execution.nproc vs the machine
def _params_with_nproc(tmp_path, nproc: int, device: str) -> Path:
    """params.yaml with execution.nproc and every global batch set to ``nproc`` (batches must divide by it)."""
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["execution"].update(nproc=nproc, device=device)
    raw["train"]["batch_size"] = nproc
    for section in raw["baselines"].values():
        for ds in section.values():
            ds["train"]["batch_size"] = nproc
    return _write(tmp_path, yaml.safe_dump(raw, sort_keys=False))


@pytest.mark.parametrize("device, gpus, bound", [
    ("cpu", "2", "cores"), ("auto", "0", "cores"), ("cuda", "2", 2), ("auto", "3", 3),
])
def test_nproc_beyond_the_machine_is_refused_before_any_process_starts(tmp_path, capsys, monkeypatch, device, gpus,
                                                                        bound):
    """Was: `execution.nproc: 1000` on a 2-core machine launched torchrun with 1,000 trainers, unchecked."""
    from cpsl.runtime.nproc_bound import cpu_cores

    monkeypatch.setenv("CPSL_GPU_COUNT", gpus)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    limit = cpu_cores() if bound == "cores" else bound
    what = f"{limit} CPU core(s)" if bound == "cores" else f"{limit} GPU(s) visible"
    path = _params_with_nproc(tmp_path, 1000, device)
    code, err = _run(["train", "--params", str(path), "--seed", "0", "--ablation", "A6"], capsys)
    assert code == 2, err
    assert err == (f"cpsl train: invalid params: {path}: 'execution.nproc' is 1000, but this machine has {what} for "
                   f"execution.device {device} (one training process each); set execution.nproc to at most "
                   f"{limit}\n")
    assert not (tmp_path / "results").exists() and not (tmp_path / ".cpsl" / "gpu-locks").exists()


def test_a_scheduler_s_gpu_choice_is_the_bound(monkeypatch):
    from cpsl.runtime.nproc_bound import check_nproc

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    check_nproc(2, "cuda", "p")  # the two GPUs SLURM gave this job
    with pytest.raises(ParamsError, match="'execution.nproc' is 3, but this machine has 2 GPU"):
        check_nproc(3, "auto", "p")
