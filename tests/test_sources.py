"""cpsl.data.sources: the SDK's URL tables and folds, loaded without importing the mmsdk package."""
from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from cpsl.data.sources import RawDataError, dataset_spec, standard_folds

_SDK_DIR = Path(importlib.util.find_spec("mmsdk").submodule_search_locations[0]) / "mmdatasdk/dataset/standard_datasets"


def _sdk_literals(rel: str) -> dict:
    """The SDK module's top-level assignments, read with ast (importing mmsdk would pull in torch)."""
    tree = ast.parse((_SDK_DIR / rel).read_text())
    values: dict = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = ast.literal_eval(node.value)
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript):  # raw["words"] = "..."
            target = node.targets[0]
            values[target.value.id][ast.literal_eval(target.slice)] = ast.literal_eval(node.value)
    return values


@pytest.mark.parametrize("dataset,folder,keys", [
    ("mosi", "CMU_MOSI/cmu_mosi", {"words": ("raw", "words"), "acoustic": ("highlevel", "COVAREP"),
                                   "visual": ("highlevel", "FACET 4.1"),
                                   "labels": ("labels", "Opinion Segment Labels")}),
    ("mosei", "CMU_MOSEI/cmu_mosei", {"words": ("raw", "words"), "acoustic": ("highlevel", "COVAREP"),
                                      "visual": ("highlevel", "FACET 4.2"), "labels": ("labels", "Sentiment Labels")}),
])
def test_urls_and_folds_equal_the_sdk_tables(dataset, folder, keys):
    table = _sdk_literals(folder + ".py")
    spec = dataset_spec(dataset)
    for role, (dict_name, key) in keys.items():
        assert spec.file(role).url == table[dict_name][key]
    sdk_folds = _sdk_literals(folder + "_std_folds.py")
    assert standard_folds(dataset) == {s: sdk_folds[f"standard_{s}_fold"] for s in ("train", "valid", "test")}


def test_loading_the_tables_imports_neither_mmsdk_nor_torch():
    # A fresh interpreter: other tests may already have imported mmsdk in this process.
    code = ("import sys; from cpsl.data.sources import dataset_spec, standard_folds; "
            "dataset_spec('mosei'); standard_folds('mosi'); print('mmsdk' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert out.stderr == ""  # silent


@pytest.mark.parametrize("dataset,names", [
    ("mosi", ["CMU_MOSI_TimestampedWords.csd", "CMU_MOSI_COVAREP.csd", "CMU_MOSI_VisualFacet_4.1.csd",
              "CMU_MOSI_Opinion_Labels.csd"]),
    ("mosei", ["CMU_MOSEI_TimestampedWords.csd", "CMU_MOSEI_COVAREP.csd", "CMU_MOSEI_VisualFacet42.csd",
               "CMU_MOSEI_LabelsSentiment.csd"]),
])
def test_file_names_are_the_url_basenames(dataset, names):
    spec = dataset_spec(dataset)
    assert spec.file_names() == names
    for role in ("words", "acoustic", "visual", "labels"):
        assert spec.file(role).url.endswith("/" + spec.file(role).name)


def test_feature_names():
    assert (dataset_spec("mosi").acoustic_name, dataset_spec("mosi").visual_name) == ("COVAREP", "FACET 4.1")
    assert (dataset_spec("mosei").acoustic_name, dataset_spec("mosei").visual_name) == ("COVAREP", "FACET 4.2")


def test_standard_folds_are_disjoint_and_mosi_sized():
    folds = standard_folds("mosi")
    sizes = {k: len(v) for k, v in folds.items()}
    assert sizes == {"train": 52, "valid": 10, "test": 31}  # MOSI's 93 videos
    assert not (set(folds["train"]) & set(folds["valid"]) or set(folds["train"]) & set(folds["test"]))


def test_demo_has_no_urls_and_no_sdk_folds():
    spec = dataset_spec("demo")
    assert all(spec.file(r).url is None for r in ("words", "acoustic", "visual", "labels"))
    with pytest.raises(RawDataError, match="demo"):
        standard_folds("demo")


def test_unknown_dataset_is_named():
    with pytest.raises(RawDataError, match="'iemocap'"):
        dataset_spec("iemocap")
