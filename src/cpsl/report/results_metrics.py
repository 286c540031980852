"""reports/<dataset>/results.json: per row, the few numbers experiments are compared by.

summary.json holds everything (per-seed values, intervals, tests); DVC declares this small file as the report
stage's ``metrics``, so `dvc metrics diff` and `dvc exp show --only-changed` compare experiments by their results
rather than by hundreds of params. One entry per trained row (the paper's duplicate rows B1, C3, C4 are their
twins' runs and appear once, under the twin's ID); per row, means over seeds on the test split:

- ``mae``, ``corr``: all test segments; ``acc2``: Acc-2 in the tables' primary (non-zero) convention, percent;
- ``av_not_learnt``: seeds whose acoustic/visual path did not learn (cpsl.metrics.av_learnt; Table 2's mark),
  absent for rows without an a/v path (T0) and when no seed has a verdict;
- ``seeds``: how many seeds the means are over.
"""
from __future__ import annotations

# (key in results.json, key in summary.json's per-split statistics)
RESULT_KEYS = (("mae", "mae"), ("corr", "corr"), ("acc2", "acc2_nonzero"))
DECIMALS = 6  # below any difference a reader would act on; keeps `dvc metrics diff` columns short


def row_results(entry: dict) -> dict:
    test = entry.get("test") or {}
    row = {}
    for name, key in RESULT_KEYS:
        mean = (test.get(key) or {}).get("mean")
        if mean is not None:  # an undefined metric (e.g. Corr of constant predictions) is left out, not null
            row[name] = round(float(mean), DECIMALS)
    learnt = entry.get("av_learnt") or {}
    if learnt and not learnt.get("not_applicable") and len(learnt.get("unknown_seeds", [])) < learnt["n_seeds"]:
        row["av_not_learnt"] = int(learnt["n_marked"])
    row["seeds"] = len(entry.get("seeds", []))
    return row


def flat_results(summary: dict) -> dict:
    """{row ID: {mae, corr, acc2, av_not_learnt, seeds}} for the rows of summary.json, each trained row once."""
    return {aid: row_results(entry) for aid, entry in summary["ablations"].items()
            if entry.get("trained_as", aid) == aid}
