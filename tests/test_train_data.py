"""Training batches: the cache is checked before any step."""
from __future__ import annotations

import numpy as np
import pytest
from train_helpers import make_cache

from cpsl.formats.cache import CacheError, read_split, write_cache
from cpsl.train.data import BatchPlan, load_tensors


def test_non_finite_features_are_refused_naming_the_segment(tmp_path):
    path = make_cache(tmp_path / "ok.h5")
    splits = {s: read_split(path, s) for s in ("train", "valid", "test")}
    splits["train"]["visual"][2, 1, 0] = np.inf
    bad = tmp_path / "bad.h5"
    from cpsl.formats.cache import read_attrs

    write_cache(bad, splits, read_attrs(path))
    with pytest.raises(CacheError,
                       match=r"split 'train' key 'visual' has non-finite values in 1 segment\(s\), first 'train_2"):
        load_tensors(bad, "train")
    assert load_tensors(bad, "valid")["visual"].shape[0] == len(splits["valid"]["label"])


def test_batch_plan_covers_every_sample_once_per_epoch_and_resumes():
    plan = BatchPlan(n_samples=10, batch_per_rank=4, rank=0, world_size=1, seed=3)
    batches = list(plan.batches(epoch=1))
    assert plan.steps_per_epoch == 3 and sorted(np.concatenate([b.numpy() for b in batches])) == list(range(10))
    resumed = list(plan.batches(epoch=1, start_step=1))
    assert all(np.array_equal(a, b) for a, b in zip(batches[1:], resumed))
    assert not np.array_equal(np.concatenate(batches), np.concatenate(list(plan.batches(epoch=2))))
