"""The ``CPSL_*`` environment variables: the one list of them, their allowed values, and their check.

They are validated like params: every ``cpsl`` subcommand (and the Snakefile, before any job) calls
:func:`check_environment` first, so ``CPSL_GPU_COUNT=abc`` or an unknown ``CPSL_GPU_SLOT=4`` (a typo) fails at once
in one line naming the variable and what it may be (the CLI exits 2), never as a traceback deep in a job. An
empty value means unset. Readers take the parsed value from :func:`env_value`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from cpsl.errors import ParamsError


class EnvVarError(ParamsError):
    """A ``CPSL_*`` variable that is unknown or out of range; the message names it and the allowed values."""


@dataclass(frozen=True)
class EnvVar:
    parse: Callable[[str], Any]  # raises ValueError for a value outside ``expect``
    expect: str
    meaning: str


def _integer(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text.strip())
        if not lo <= value <= hi:
            raise ValueError(text)
        return value
    return parse


def _seconds(text: str) -> float:
    value = float(text.strip())
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


def _flag(text: str) -> bool:
    if text.strip() not in ("0", "1"):
        raise ValueError(text)
    return text.strip() == "1"


def _folder(text: str) -> Path:
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(text)
    return path


ENV_VARS: dict[str, EnvVar] = {
    "CPSL_GPU_COUNT": EnvVar(_integer(0, 4096), "an integer in [0, 4096]",
                             "the GPUs of this machine, counted with nvidia-smi -L when unset"),
    "CPSL_GPU_SLOTS": EnvVar(_integer(1, 1024), "an integer in [1, 1024]", "jobs that may share one GPU"),
    "CPSL_GPU_WAIT_S": EnvVar(_seconds, "a number of seconds >= 0",
                              "how long a job waits for a free GPU; no limit when unset"),
    "CPSL_GPU_LEASE": EnvVar(_flag, "0 or 1", "0: never lease a GPU"),
    "CPSL_GPU_LOCK_DIR": EnvVar(_folder, "a folder (or a path where one can be created)",
                                "the GPU lock files' folder"),
    "CPSL_SKIP_TORCH": EnvVar(_flag, "0 or 1", "1: workflow/setup.sh keeps the installed torch"),
}


def _raw(name: str, environ: Mapping[str, str]) -> str | None:
    value = environ.get(name)
    return value if value is not None and value.strip() else None


def env_value(name: str, environ: Mapping[str, str] | None = None):
    """The parsed value of a known ``CPSL_*`` variable, or None when it is unset or empty."""
    spec = ENV_VARS[name]
    raw = _raw(name, os.environ if environ is None else environ)
    if raw is None:
        return None
    try:
        return spec.parse(raw)
    except ValueError:
        raise EnvVarError(f"environment variable {name}={raw!r}: must be {spec.expect} ({spec.meaning}); "
                          f"fix it or unset it") from None


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Refuse, naming the first offender, an unknown ``CPSL_*`` variable or a known one with a bad value."""
    environ = os.environ if environ is None else environ
    for name in sorted(k for k in environ if k.startswith("CPSL_")):
        if name not in ENV_VARS:
            raise EnvVarError(f"environment variable {name} is not one cpsl reads (a typo?); known: "
                              f"{', '.join(ENV_VARS)}; unset it")
        env_value(name, environ)
