"""The leaves of the params schema (cpsl.config.SCHEMA): a type and an allowed range or choice per value.

Their own module so that every schema fragment (the baselines' sections declare theirs next to their row:
cpsl.baselines.registry) uses the same checks and messages without importing cpsl.config. Standard library only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Spec:
    """One leaf of the schema: its type(s) and an optional range/choice check."""

    types: tuple
    check: Callable[[Any], bool] | None = None
    expect: str = ""  # human description of the allowed values, used in errors
    nullable: bool = False


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


def choice(*options) -> Spec:
    return Spec((str,), lambda v: v in options, "one of " + ", ".join(options))


BOOL = Spec((bool,), None, "true or false")
STRING = Spec((str,), lambda v: bool(v.strip()), "a non-empty string")
