"""The leaves of the params schema (cpsl.config.schema.SCHEMA): a type and an allowed range or choice per value.

Their own module so that every schema fragment (the baselines' sections declare theirs next to their row:
cpsl.baselines.registry) uses the same checks and messages without importing cpsl.config.schema. Standard library only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


# Spec.default of a key without one (None is a value: a nullable key could default to it)
NO_DEFAULT = _NoDefault()


@dataclass(frozen=True)
class Spec:
    """One leaf of the schema: its type(s), an optional range/choice check and an optional default. The default
    is the value code falls back to when a section mapping given straight to the API leaves the key out
    (cpsl.config.param_sections); a params file still lists every key."""

    types: tuple
    check: Callable[[Any], bool] | None = None
    expect: str = ""  # human description of the allowed values, used in errors
    nullable: bool = False
    default: Any = NO_DEFAULT


def number(lo=None, hi=None, lo_open=False, hi_open=False, integer=False) -> Spec:
    def check(v):
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        if hi is not None and (v >= hi if hi_open else v > hi):
            return False
        return True

    lb = "" if lo is None else ("(" if lo_open else "[") + str(lo)
    ub = "" if hi is None else str(hi) + (")" if hi_open else "]")
    expect = f"{'an integer' if integer else 'a number'}" + (f" in {lb or '(-inf'}, {ub or 'inf)'}" if lb or ub else "")
    return Spec((int,) if integer else (int, float), check, expect)


def choice(*options, default=NO_DEFAULT) -> Spec:
    if default is not NO_DEFAULT and default not in options:
        raise ValueError(f"choice: default {default!r} is not among {options}")
    return Spec((str,), lambda v: v in options, "one of " + ", ".join(options), default=default)


BOOL = Spec((bool,), None, "true or false")
STRING = Spec((str,), lambda v: bool(v.strip()), "a non-empty string")
