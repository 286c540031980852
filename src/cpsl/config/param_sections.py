"""The params sections the method's equations read, as typed, frozen records (issue 23).

Each is built once per run from validated params (cpsl.config.schema.validate_params), and the code that uses a value
receives its section, never the whole params dict: Eq. 5 and GE the ``gm`` section, Eq. 6 ``cp.eta``, Eq. 4 the
``loss`` weights, the network its ``model`` section. The fields are the schema's keys (tests/test_param_sections.py
holds them equal); cpsl.config.schema.SCHEMA is the one place a default lives. Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Mapping, TypeVar

from cpsl.config.param_types import NO_DEFAULT
from cpsl.config.schema import SCHEMA


@dataclass(frozen=True)
class ModelSection:
    """``model``: the network's sizes and choices (cpsl.model.network.build_model)."""

    NAME: ClassVar[str] = "model"
    intermediate_dim: int
    fusion_dim: int
    fusion: str
    encoder_dropout: float
    classifier_dropout: float
    beta: float
    pooling: str
    var_eps: float
    eval_norm: str


@dataclass(frozen=True)
class LossSection:
    """``loss``: the task criterion and the lambdas of Eq. 4 (``stat``: the Statistical Loss's, Eq. 3)."""

    NAME: ClassVar[str] = "loss"
    task: str
    recon: float
    uni: float
    div: float
    stat: float


@dataclass(frozen=True)
class GMSection:
    """``gm``: Eq. 5's alpha and eps, the modulation window, the coefficient's form and the GE noise's source."""

    NAME: ClassVar[str] = "gm"
    alpha: float
    start_epoch: int
    end_epoch: int
    eps: float
    coefficient: str
    ge_noise: str


@dataclass(frozen=True)
class CPSection:
    """``cp``: Eq. 6's multiplicative penalty eta."""

    NAME: ClassVar[str] = "cp"
    eta: float


SECTIONS = (ModelSection, LossSection, GMSection, CPSection)

S = TypeVar("S", ModelSection, LossSection, GMSection, CPSection)


def section(cls: type[S], values: S | Mapping[str, Any], schema: Mapping | None = None) -> S:
    """``values`` (the ``cls.NAME`` section of params, or already a ``cls``) as a ``cls``. A key the mapping
    leaves out takes its default in ``schema`` (default: cpsl.config.schema.SCHEMA), else KeyError naming the dotted
    key; a key the section does not have is a KeyError too (validated params have exactly the schema's keys)."""
    if isinstance(values, cls):
        return values
    specs = (SCHEMA if schema is None else schema)[cls.NAME]
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise KeyError(f"params has unknown key(s) {', '.join(f'{cls.NAME}.{k}' for k in unknown)}")
    kwargs = {}
    for name in names:
        if name in values:
            kwargs[name] = values[name]
        elif specs[name].default is not NO_DEFAULT:
            kwargs[name] = specs[name].default
        else:
            raise KeyError(f"params is missing '{cls.NAME}.{name}'")
    return cls(**kwargs)
