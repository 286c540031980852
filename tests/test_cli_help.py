"""The command line a new user meets first: --version, plain-text help with an example per stage, and a missing
--run folder named as missing (issue 24, item 7)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import cpsl
from cpsl.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "align", "train", "evaluate", "report", "deps")


def _cli(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cpsl.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_version_prints_the_package_version():
    done = _cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"cpsl {cpsl.__version__}"


def test_top_level_help_is_plain_text_and_names_every_stage(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text and ":func:" not in text  # no RST markup
    for stage in STAGES:
        assert f"\n    {stage} " in text
    assert "examples:" in text and "exit codes:" in text


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_has_a_description_and_an_example_that_parses(stage, capsys):
    with pytest.raises(SystemExit):
        main([stage, "--help"])
    text = capsys.readouterr().out
    assert "example:\n  cpsl " + stage in text
    # the example's own arguments are ones the parser accepts (a doc that names a missing flag is a bug)
    example = text.split("example:\n  ", 1)[1].split("#", 1)[0].split()
    args = build_parser().parse_args(example[1:])
    assert args.stage == stage


def test_evaluate_on_a_missing_folder_says_the_folder_does_not_exist(tmp_path):
    missing = tmp_path / "results" / "A6-seed0"
    done = _cli("evaluate", "--run", str(missing))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(missing) in lines[0] and "no such run folder" in lines[0]
    assert not missing.exists()
