"""metrics.json as the report reads it: every key it uses, with its type and range, checked before any is used.

cpsl evaluate writes these files (cpsl.stages.evaluate), but the report reads whatever a run folder holds: a file
edited by hand, written by an older version or damaged must fail in one line naming the file and the dotted key
(``<run>/metrics.json: 'test.mae' must be a finite number, got "abc"``), never as a traceback deep in the
statistics, and never turn into an "n/a" cell. JSON ``NaN``/``Infinity`` (Python's json reads them) are refused;
``null`` is the one way to say "undefined" (evaluate writes it for, e.g., the correlation of constant predictions),
except for ``mae``, which every evaluated split has. Keys the report does not read are left alone.
Standard library only (plus the metric names), so it needs neither torch nor scipy.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from cpsl.config.rows import ROWS
from cpsl.errors import PipelineError
from cpsl.metrics.scores import COUNT_KEYS, METRIC_KEYS

# The range each metric can take (accuracies and F1 in percent); the report's t intervals are clipped to it.
METRIC_BOUNDS = {"acc2_nonzero": (0.0, 100.0), "f1_nonzero": (0.0, 100.0), "acc2_haszero": (0.0, 100.0),
                 "f1_haszero": (0.0, 100.0), "acc7": (0.0, 100.0), "acc5": (0.0, 100.0), "mae": (0.0, math.inf),
                 "corr": (-1.0, 1.0), "mae_nonzero_subset": (0.0, math.inf), "corr_nonzero_subset": (-1.0, 1.0)}
SPLITS = ("test", "valid")  # test is required, valid optional
STREAMS = ("acoustic", "visual")
LEARNT_STATUS = ("learnt", "not_learnt", "not_applicable", "unknown")


class MetricsFileError(PipelineError, ValueError):
    """A metrics.json the report cannot use; the message names the file and the dotted key."""


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Checker:
    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, expect: str, value: Any) -> None:
        raise MetricsFileError(f"{self.path}: '{key}' must be {expect}, got {_shown(value)}; rerun `cpsl evaluate "
                               f"--run {self.path.parent}` to write it again")

    def require(self, m: Mapping, key: str, dotted: str) -> Any:
        if key not in m:
            raise MetricsFileError(f"{self.path}: missing key '{dotted}'; rerun `cpsl evaluate --run "
                                   f"{self.path.parent}` to write it again")
        return m[key]

    def mapping(self, value: Any, key: str, nullable: bool = False) -> None:
        if not (isinstance(value, dict) or (nullable and value is None)):
            self.fail(key, "a mapping" + (" or null" if nullable else ""), value)

    def integer(self, value: Any, key: str) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            self.fail(key, "a non-negative integer", value)

    def number(self, value: Any, key: str, bounds=(-math.inf, math.inf), nullable: bool = True) -> None:
        if value is None and nullable:
            return
        lo, hi = bounds
        where = "" if (lo, hi) == (-math.inf, math.inf) else f" in [{lo:g}, {hi:g}]"
        expect = f"a finite number{where}" + (" or null" if nullable else "")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(key, expect, value)
        if not lo <= value <= hi:
            self.fail(key, expect, value)


def check_metrics(m: Mapping, path: Path) -> None:
    """Raise :class:`MetricsFileError` naming ``path`` and the first key of ``m`` the report cannot use."""
    c = _Checker(Path(path))
    ablation = c.require(m, "ablation", "ablation")
    if ablation not in ROWS:
        c.fail("ablation", "a row ID among " + ", ".join(ROWS), ablation)
    c.integer(c.require(m, "seed", "seed"), "seed")
    if "dataset" in m and not isinstance(m["dataset"], str):
        c.fail("dataset", "a dataset name", m["dataset"])
    c.integer(c.require(m, "selected_epoch", "selected_epoch"), "selected_epoch")
    for split in SPLITS:
        if split in m or split == "test":  # valid is optional
            _check_split(c, c.require(m, split, split), split)
    if "reliance" in m:
        _check_reliance(c, m["reliance"])
    if "learnt" in m:
        _check_learnt(c, m["learnt"])


def _check_split(c: _Checker, split: Any, name: str) -> None:
    c.mapping(split, name)
    c.number(c.require(split, "mae", f"{name}.mae"), f"{name}.mae", METRIC_BOUNDS["mae"], nullable=False)
    for key in METRIC_KEYS:
        if key in split:
            c.number(split[key], f"{name}.{key}", METRIC_BOUNDS[key])
    for key in COUNT_KEYS:
        if key in split:
            c.integer(split[key], f"{name}.{key}")


def _check_reliance(c: _Checker, reliance: Any) -> None:
    c.mapping(reliance, "reliance", nullable=True)
    for stream in STREAMS:
        if stream not in (reliance or {}):
            continue
        deltas = reliance[stream]
        c.mapping(deltas, f"reliance.{stream}")
        for key, value in deltas.items():
            c.number(value, f"reliance.{stream}.{key}")


def _check_learnt(c: _Checker, verdict: Any) -> None:
    c.mapping(verdict, "learnt", nullable=True)
    if verdict is None:
        return
    if "status" in verdict and verdict["status"] not in LEARNT_STATUS:
        c.fail("learnt.status", "one of " + ", ".join(LEARNT_STATUS), verdict["status"])
    if "av_not_learnt" in verdict and not isinstance(verdict["av_not_learnt"], bool):
        c.fail("learnt.av_not_learnt", "true or false", verdict["av_not_learnt"])
