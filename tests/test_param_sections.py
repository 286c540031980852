"""Typed params sections (issue 23 item 4): built from the schema and the validated params, passed to the
equations instead of the params dict, with defaults defined in the schema only."""
from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path

import pytest
import torch

from cpsl.config.ablations import Switches
from cpsl.config.param_sections import SECTIONS, CPSection, GMSection, LossSection, ModelSection, section
from cpsl.config.param_types import NO_DEFAULT, choice
from cpsl.config.schema import SCHEMA, ParamsError, load_params, validate_params
from cpsl.model import recipe as recipe_module
from cpsl.train.distributed import DistContext

REPO = Path(__file__).resolve().parents[1]
CPU = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def params():
    return load_params(REPO / "params.yaml", overrides=["dataset=mosi"])


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda c: c.NAME)
def test_each_section_has_exactly_the_schema_keys_and_the_params_values(cls, params):
    assert [f.name for f in dataclasses.fields(cls)] == list(SCHEMA[cls.NAME])
    built = section(cls, params[cls.NAME])
    assert dataclasses.asdict(built) == params[cls.NAME]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(built, dataclasses.fields(cls)[0].name, 0)


def test_a_changed_value_reaches_the_section(params):
    changed = load_params(REPO / "params.yaml", overrides=["dataset=mosi", "cp.eta=0.25", "gm.coefficient=shifted",
                                                             "loss.stat=0.7", "model.fusion=sum"])
    assert section(CPSection, changed["cp"]).eta == 0.25
    assert section(GMSection, changed["gm"]).coefficient == "shifted"
    assert section(LossSection, changed["loss"]).stat == 0.7
    assert section(ModelSection, changed["model"]).fusion == "sum"
    assert section(CPSection, params["cp"]).eta == 0.5


def test_a_left_out_key_takes_the_schema_default_and_follows_a_changed_schema(params):
    partial = {k: v for k, v in params["gm"].items() if k not in ("coefficient", "ge_noise")}
    built = section(GMSection, partial)
    assert (built.coefficient, built.ge_noise) == (SCHEMA["gm"]["coefficient"].default,
                                                   SCHEMA["gm"]["ge_noise"].default) == ("paper", "unmodulated")
    schema = copy.deepcopy(SCHEMA)
    schema["gm"]["coefficient"] = choice("paper", "shifted", default="shifted")
    schema["gm"]["ge_noise"] = choice("unmodulated", "modulated", default="modulated")
    built = section(GMSection, partial, schema)
    assert (built.coefficient, built.ge_noise) == ("shifted", "modulated")


def test_a_key_without_default_or_unknown_fails_naming_it(params):
    assert SCHEMA["cp"]["eta"].default is NO_DEFAULT
    with pytest.raises(KeyError, match=r"cp\.eta"):
        section(CPSection, {})
    with pytest.raises(KeyError, match=r"gm\.alpha"):
        section(GMSection, {k: v for k, v in params["gm"].items() if k != "alpha"})
    with pytest.raises(KeyError, match=r"cp\.etta"):
        section(CPSection, {"eta": 0.5, "etta": 0.5})
    with pytest.raises(ValueError, match="default 'other' is not among"):
        choice("paper", "shifted", default="other")


@pytest.mark.parametrize("key", ["gm.ge_noise", "gm.coefficient", "cp.eta", "loss.stat", "model.eval_norm"])
def test_a_params_file_still_lists_every_key(params, key):
    """A schema default fills in for direct callers only: a params file without the key fails at start-up."""
    raw = copy.deepcopy(params)
    sec, leaf = key.split(".")
    del raw[sec][leaf]
    with pytest.raises(ParamsError, match=f"missing key '{re.escape(key)}'"):
        validate_params(raw)
    raw[sec][leaf] = params[sec][leaf]
    raw[sec]["unknown_key"] = 1
    with pytest.raises(ParamsError, match=f"unknown key '{sec}.unknown_key'"):
        validate_params(raw)


def test_the_cpsl_recipe_hands_the_equations_their_sections(params, monkeypatch):
    """Eq. 5/6 get the run's gm and cp sections (built once by the recipe), Eq. 4 its loss section."""
    seen = []

    def spy(encoders, mae_a, mae_v, epoch, gm, cp, switches, generator):
        seen.append((gm, cp))

    monkeypatch.setattr(recipe_module, "modulate_gradients", spy)
    changed = validate_params({**params, "cp": {"eta": 0.125}})
    recipe = recipe_module.CPSLRecipe(torch.nn.Linear(1, 1), changed, None, CPU, switches=Switches())
    recipe.model.modality_encoders = lambda: {}
    recipe.after_backward(torch.ones(2), torch.tensor(2.0, dtype=torch.float64), None, None, 0, None)
    assert seen == [(section(GMSection, changed["gm"]), CPSection(eta=0.125))]
    assert isinstance(seen[0][0], GMSection) and seen[0][0] is recipe.gm
    assert recipe.loss_module().loss is recipe.loss == section(LossSection, changed["loss"])


SECTION_KEYS = sorted({key for cls in SECTIONS for key in SCHEMA[cls.NAME]})


def test_no_code_repeats_a_section_default_with_get():
    """The schema is the one place a default lives: no ``.get("coefficient", "paper")`` in the package."""
    pattern = re.compile(r"""\.get\(\s*["'](%s)["']\s*,""" % "|".join(SECTION_KEYS))
    found = [f"{path.relative_to(REPO)}:{n}" for path in sorted((REPO / "src" / "cpsl").rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []
