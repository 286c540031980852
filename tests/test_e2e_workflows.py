"""End to end through the real workflow engines, on a small demo, in throw-away git repos.

- prepare + align through Snakemake and through DVC give the same HDF5 cache;
- `dvc repro` a second time runs nothing;
- the whole pipeline (train, evaluate, report) through both engines gives the same set of files, and
  `dvc exp run -S cp.eta=0.3` reruns training but no data stage.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}

pytestmark = pytest.mark.slow


def make_repo(dest: Path, **overrides) -> Path:
    """A git repo holding the pipeline definition and a small-demo params.yaml."""
    dest.mkdir(parents=True)
    for name in ("Snakefile", "dvc.yaml", "workflow", "src", ".dvc", ".dvcignore", ".gitignore"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name, **({"ignore": shutil.ignore_patterns("__pycache__", "*.egg-info")} if src.is_dir() else {}))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["demo"].update(videos=10, min_segments=3, max_segments=4)
    params["train"].update(epochs=2, seeds=[0, 1], lr=1e-4)
    params["demo"]["train"]["epochs"] = 2  # the demo's own schedule replaces train.epochs
    params["ablations"] = ["A6"]  # the engines' matrix over rows is checked by test_workflow_parity (dry runs)
    for dotted, value in overrides.items():
        node = params
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = lambda *a: subprocess.run(["git", *a], cwd=dest, check=True, capture_output=True, env=ENV)
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qm", "init")
    return dest


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def pd_read(path: Path) -> tuple[list, np.ndarray]:
    rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
    return [r[:3] for r in rows], np.array([float(r[3]) for r in rows])


def cache_contents(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as h5:
        for split in ("train", "valid", "test"):
            for key, ds in h5[split].items():
                out[f"{split}/{key}"] = ds[()]
        out["attrs"] = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in h5.attrs.items()}
    return out


def check_cache(path: Path) -> dict:
    data = cache_contents(path)
    assert data["attrs"]["max_seq_len"] == 50
    total = 0
    for split in ("train", "valid", "test"):
        ids, mask = data[f"{split}/input_ids"], data[f"{split}/attention_mask"]
        acoustic, visual = data[f"{split}/acoustic"], data[f"{split}/visual"]
        n = len(data[f"{split}/label"])
        total += n
        assert ids.shape == mask.shape == (n, 50)
        assert acoustic.shape[:2] == visual.shape[:2] == (n, 50) and acoustic.dtype == np.float32
        assert np.isfinite(acoustic).all() and np.isfinite(visual).all()
        assert np.all(np.abs(data[f"{split}/label"]) <= 3)
        # padding and special tokens carry zero feature vectors
        assert np.all(acoustic[mask == 0] == 0) and np.all(acoustic[:, 0] == 0)
    assert total > 20
    return data


def test_prepare_align_snakemake_and_dvc_agree(tmp_path):
    smk = make_repo(tmp_path / "smk")
    run(["snakemake", "--cores", "2", "data/processed/demo.h5"], smk)
    a = check_cache(smk / "data/processed/demo.h5")

    dvc = make_repo(tmp_path / "dvc")
    out = run(["dvc", "repro", "align"], dvc)
    assert "Running stage 'prepare'" in out and "Running stage 'align'" in out
    b = check_cache(dvc / "data/processed/demo.h5")
    assert a.keys() == b.keys()
    for key in a:
        if key == "attrs":
            assert a[key] == b[key]
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)

    again = run(["dvc", "repro", "align"], dvc)
    assert "Running stage" not in again

    # Snakemake also sees nothing to do.
    dry = run(["snakemake", "-n", "--cores", "1", "data/processed/demo.h5"], smk)
    assert "Nothing to be done" in dry


def test_whole_pipeline_both_engines(tmp_path):
    smk = make_repo(tmp_path / "smk")
    run(["snakemake", "--cores", "2"], smk)
    dvc = make_repo(tmp_path / "dvc")
    run(["dvc", "repro"], dvc)

    produced = lambda root: sorted(
        str(p.relative_to(root)) for p in root.rglob("*")
        if p.is_file() and p.parts[len(root.parts)] in ("results", "reports") and "state" not in p.parts
        and p.name != ".snakemake_timestamp"  # Snakemake's marker inside directory outputs
    )
    assert produced(smk) == produced(dvc)
    files = set(produced(smk))
    for seed in (0, 1):
        for name in ("best.pt", "metrics.json", "predictions.csv", "history.csv", "train_summary.json"):
            assert f"results/demo/A6-seed{seed}/{name}" in files
    for name in ("summary.json", "table1.md", "table2.md", "table2.csv", "figure2_losses.png", "figure3_modulation.png"):
        assert f"reports/demo/{name}" in files

    # Same seed, same run: both engines' predictions agree. Not bit-for-bit: Snakemake sets
    # OMP_NUM_THREADS to the job's threads, and a different thread count changes float summation order.
    for seed in (0, 1):
        p = f"results/demo/A6-seed{seed}/predictions.csv"
        a, b = (pd_read(root / p) for root in (smk, dvc))
        assert a[0] == b[0]  # split, segment_id, label
        np.testing.assert_allclose(a[1], b[1], atol=1e-3)

    # An experiment on the penalty factor reruns training and what follows, never a data stage.
    run(["git", "add", "-A"], dvc)
    run(["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qm", "baseline"], dvc)
    out = run(["dvc", "exp", "run", "-S", "cp.eta=0.3"], dvc)
    assert "Running stage 'train@A6-0'" in out
    assert "Running stage 'prepare'" not in out and "Running stage 'align'" not in out
    shown = run(["dvc", "exp", "show", "--no-pager", "--csv"], dvc)
    assert "cp.eta" in shown
