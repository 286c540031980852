"""docs/params.md is generated from the schema and params.yaml's comments (cpsl.docs_params): it must not drift."""
from __future__ import annotations

from pathlib import Path

import pytest

from cpsl import docs_params
from cpsl.config.schema import SCHEMA

ROOT = Path(__file__).resolve().parents[1]
PARAMS_TEXT = (ROOT / "params.yaml").read_text(encoding="utf-8")


def test_docs_params_md_is_what_the_generator_writes():
    committed = (ROOT / "docs" / "params.md").read_text(encoding="utf-8")
    assert committed == docs_params.render(PARAMS_TEXT), (
        "docs/params.md drifted from src/cpsl/config/schema.py / params.yaml: run `python -m cpsl.docs_params --write`")


def test_every_schema_leaf_has_a_row():
    doc = docs_params.render(PARAMS_TEXT)
    top = [k for k in SCHEMA if k != "baselines"]
    for section in top:
        for dotted, _ in docs_params._leaves({section: SCHEMA[section]}):
            assert f"| `{dotted}` |" in doc, dotted


def test_a_changed_comment_or_default_changes_the_doc():
    """The drift check can fail: an edited comment or default in params.yaml gives another document."""
    doc = docs_params.render(PARAMS_TEXT)
    edited = PARAMS_TEXT.replace("eta: 0.5               # multiplicative penalty, in (0, 1)",
                                 "eta: 0.3               # a new comment")
    assert edited != PARAMS_TEXT
    new = docs_params.render(edited)
    assert "| `cp.eta` | `0.3` |" in new and "a new comment" in new and new != doc


def test_a_wrapped_comment_is_read_whole_and_stops_at_the_next_key():
    notes = docs_params.comments("a:  # first\n    # second\nb: 1  # own\n  # not b's: indented, but b is at 0\nc: 2\n")
    assert notes["a"] == "first second"
    assert notes["b"] == "own not b's: indented, but b is at 0"
    assert notes["c"] == ""


def test_a_schema_key_missing_from_params_yaml_is_an_error():
    with pytest.raises(KeyError, match="cp.eta"):
        docs_params.render(PARAMS_TEXT.replace("  eta: 0.5 ", "  etb: 0.5 "))
