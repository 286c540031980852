"""CSV files cpsl writes never make a spreadsheet run a formula (issue 16, item 5): a segment id like
`=HYPERLINK(...)` or `-2+3+cmd|x`, or a row label like `+AME`, stays text; numbers stay numbers; the report
reads the ids back exactly."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import yaml
from test_report_stage import _labels, make_run

from cpsl.config.schema import validate_params
from cpsl.formats import run_folder
from cpsl.runtime.io_utils import FORMULA_START, plain_text, spreadsheet_text
from cpsl.stages.report import run_report

HOSTILE_IDS = ["=HYPERLINK(\"http:x\")[0]", "-2+3+cmd|' /C calc'!A0[1]", "+1[2]", "@SUM(A1)[3]", "\tx[4]",
               "'=1[5]", "-3g5yACwYnA[0]"]  # the last: a real MOSEI id starts with '-'


def _cells(path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _assert_no_formula(rows: list[list[str]]) -> None:
    for row in rows:
        for cell in row:
            if cell.startswith(FORMULA_START) and not cell.startswith("'"):
                float(cell)  # only a number may start with '-' or '+'


def test_predictions_csv_neutralises_formula_ids_and_reads_them_back(tmp_path):
    rows = [("test", seg, -1.5 + i, 0.25 - i) for i, seg in enumerate(HOSTILE_IDS)]
    run_folder.write_predictions(tmp_path, rows)
    cells = _cells(tmp_path / run_folder.PREDICTIONS_FILE)
    _assert_no_formula(cells)
    written = [r[1] for r in cells[1:]]
    assert written == ["'" + seg for seg in HOSTILE_IDS[:6]] + ["'-3g5yACwYnA[0]"]
    assert [r[2] for r in cells[1:3]] == ["-1.5", "-0.5"]  # negative numbers untouched
    back = run_folder.read_predictions(tmp_path, "test")
    assert list(back) == HOSTILE_IDS
    assert back["=HYPERLINK(\"http:x\")[0]"] == (-1.5, 0.25)


@pytest.mark.parametrize("text", ["", "vid0[1]", "-0.5", "+3e-05", "nan", "=1", "'", "''x", "-", "@", "\r"])
def test_spreadsheet_text_round_trips(text):
    assert plain_text(spreadsheet_text(text)) == text


def test_table2_csv_keeps_labels_as_text(tmp_path):
    with open("params.yaml") as fh:
        base_params = validate_params(yaml.safe_load(fh))
    rng = np.random.default_rng(5)
    labels = {"valid": _labels(rng, 8), "test": _labels(rng, 9)}
    for seed in (0, 1):
        make_run(tmp_path / "res", "A1", seed, 0.5, labels)
    params = {**base_params, "ablations": ["A1"], "train": {**base_params["train"], "seeds": [0, 1]}}
    run_report(params, results_dir=tmp_path / "res", out_dir=tmp_path / "rep")
    cells = _cells(tmp_path / "rep" / "table2.csv")
    _assert_no_formula(cells)
    header = cells[0]
    a1 = dict(zip(header, next(r for r in cells[1:] if r[0] == "A1")))
    assert a1["configuration"] == "'+AME"  # the paper's label, as text
