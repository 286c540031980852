"""benchmarks/study_lr_new_modules.py (issue 18's evidence) builds params that validate on the current schema and
a MOSI-size mirror with MOSI's folds and segment counts: a renamed param (e.g. train.device -> execution.device)
or a changed fold table fails here rather than when someone reruns the study for an hour."""
from __future__ import annotations

from pathlib import Path

from project_copy import load_benchmark


def _study():
    return load_benchmark("study_lr_new_modules")


def test_the_study_params_validate_and_follow_the_epochs():
    study = _study()
    params = study.dataset_params("mosi", Path("/nonexistent/mirror"), epochs=4, permutations=2)
    assert params["execution"]["device"] == "cpu" and params["train"]["epochs"] == 4
    assert params["gm"]["end_epoch"] == 3 and params["eval"]["reliance_permutations"] == 2
    assert params["text"]["model"] == study.TEXT_MODEL
    assert study.dataset_params("demo", None, epochs=3)["train"]["epochs"] == 3  # over the demo's own schedule


def test_the_mosi_size_layout_has_mosis_folds_and_segment_counts():
    from cpsl.data.sources import standard_folds

    study = _study()
    folds = standard_folds("mosi")
    counts = study.segment_counts(folds, seed=18)
    for split, ids in folds.items():
        assert sum(counts[v] for v in ids) == study.MOSI_SEGMENTS[split] and min(counts[v] for v in ids) >= 1
