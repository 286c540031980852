"""The Snakefile's ``config``: params.yaml read by cpsl's own loader (cpsl.config.schema), plus the ``--config``
switches.

Snakemake's ``configfile:`` would parse params.yaml with another YAML loader (a 100k-deep file was a 990-line
RecursionError there, a duplicate key taken last-wins) before cpsl could check it; so the Snakefile reads the file
through :func:`cpsl.config.schema.read_params_file` and validates it with :func:`cpsl.config.schema.load_params`, and
both
engines' front ends give one answer. ``--config`` carries only the workflow switches (:data:`SWITCHES`); a param
there would never reach the stages, which read params.yaml themselves.

A switch is a boolean: ``true`` or ``false`` (any case; Snakemake passes ``True``/``False`` as booleans and
anything else as text). ``yes``/``no``, ``1``/``0`` or a typo such as ``maybe`` are refused, never read as false.
"""
from __future__ import annotations

from typing import Any, Mapping

from cpsl.config.schema import SCHEMA, load_params, read_params_file
from cpsl.errors import ParamsError

SWITCHES = {"grid": "train and report the whole Table 2 grid", "table1": "train and report T0, A6 and every Table 1 "
                                                                          "baseline"}


def switch_value(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ParamsError(f"--config {key}={value}: must be true or false ({key}: {SWITCHES[key]})")


def workflow_config(cli_config: Mapping, params_file: str = "params.yaml") -> dict:
    """The rules' config: the params file's values, and every switch as a boolean (false unless given).
    ``cli_config``: what ``--config`` set (Snakemake's config before any file is read)."""
    load_params(params_file)  # fail before any job on an invalid params file, with cpsl's message
    values = read_params_file(params_file)
    switches = {key: False for key in SWITCHES}
    params, unknown = [], []
    for key, value in cli_config.items():
        if key in SWITCHES:
            switches[key] = switch_value(key, value)
        elif key in SCHEMA:
            if value != values.get(key):
                params.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ParamsError(f"--config {', '.join(unknown)}: not a workflow switch; the switches are "
                          f"{', '.join(f'{k} ({v})' for k, v in SWITCHES.items())}; params are set in {params_file}")
    if params:
        raise ParamsError(f"--config {', '.join(params)}: a param, not a workflow switch ({', '.join(SWITCHES)}): "
                          f"edit {params_file} (the stages read that file, so a --config value would not reach them)")
    return {**values, **switches}
