"""Writes and reads through links the project did not make (issue 21, item 3): lock files, run folders, mirror
files and manifest file names. Each case plants a link to a file or folder outside the project and checks that
cpsl refuses in one line (or resolves, for a mirror file) and that the outside target is untouched: content and
mtime."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from fixtures_data import make_params, write_fake_mirror
from train_helpers import make_cache, small_params, tiny_text_model, write_params

import cpsl.data.mirror as mirror_mod
import cpsl.stages.prepare as prepare_mod
from cpsl.cli import main
from cpsl.errors import PipelineError
from cpsl.formats.raw_folder import RawFolderError, read_folds, read_manifest
from cpsl.runtime import gpu_slots
from cpsl.runtime.engine_guard import LOCK_FILE, hold_for_snakemake, stage_guard
from cpsl.runtime.io_utils import sha256_file
from cpsl.runtime.runlock import LOCK_NAME, run_folder_lock
from cpsl.stages.report import ReportError, configured_runs, run_report

ONE_EPOCH = {"train.epochs": 1, "train.batch_size": 8}
OUTSIDE_TEXT = "a user's file outside the project\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile_links")
    return tiny_text_model(tmp / "text"), make_cache(tmp / "cache.h5", n_train=8, n_valid=4, n_test=4, seq_len=8)


def _outside_file(tmp_path: Path) -> tuple[Path, tuple[str, int]]:
    """A file outside the project with an old mtime; returns it and (content, mtime_ns) to compare with later."""
    target = tmp_path / "outside" / "precious.txt"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(OUTSIDE_TEXT)
    os.utime(target, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    return target, _snapshot(target)


def _snapshot(path: Path) -> tuple[str, int]:
    return path.read_text(), path.stat().st_mtime_ns


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------------------------------ lock files
def test_a_run_lock_linked_outside_is_refused_by_train_and_evaluate_and_the_target_kept(world, tmp_path, capsys):
    text, cache = world
    params_file = write_params(tmp_path / "params.yaml", small_params(text, **ONE_EPOCH))
    target, before = _outside_file(tmp_path)
    run = tmp_path / "results" / "A6-seed0"
    run.mkdir(parents=True)
    (run / LOCK_NAME).symlink_to(target)
    for stage in (["train", "--seed", "0", "--ablation", "A6", "--data", str(cache), "--out", str(run)],
                  ["evaluate", "--data", str(cache), "--run", str(run)]):
        assert main([*stage, "--params", str(params_file)]) == 1
        line = _one_line(capsys.readouterr().err)
        assert line.startswith(f"cpsl {stage[0]}: error: {run / LOCK_NAME}: is a symbolic link (to {target})"), line
        assert _snapshot(target) == before
    assert not (run / "best.pt").exists() and not (run / "dvclive").exists()


def test_a_run_lock_hard_linked_to_an_outside_file_is_refused(tmp_path):
    target, before = _outside_file(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    os.link(target, run / LOCK_NAME)
    with pytest.raises(PipelineError, match="is a hard link to another file, not the lock file cpsl makes"):
        with run_folder_lock(run, "train"):
            pass
    assert _snapshot(target) == before


def test_the_project_lock_linked_outside_is_refused_by_snakemake_and_stages(tmp_path, capsys):
    target, before = _outside_file(tmp_path)
    project = tmp_path / "project"
    (project / LOCK_FILE).parent.mkdir(parents=True)
    (project / LOCK_FILE).symlink_to(target)
    # the Snakefile's parse-time lock (also taken by `snakemake -n`) and a stage's shared lock
    with pytest.raises(PipelineError, match=r"engine\.lock: is a symbolic link \(to .*precious\.txt\)"):
        hold_for_snakemake(project)
    with pytest.raises(PipelineError, match=r"engine\.lock: is a symbolic link"):
        with stage_guard(project):
            pass
    assert _snapshot(target) == before
    # a stage from the command line: one line, exit 1
    params = make_params("demo")
    params_file = write_params(project / "params.yaml", params)
    assert main(["prepare", "--params", str(params_file)]) == 1
    assert "engine.lock: is a symbolic link" in _one_line(capsys.readouterr().err)
    assert _snapshot(target) == before and not (project / "data").exists()


def test_a_snakemake_dry_run_does_not_overwrite_a_linked_project_lock(tmp_path):
    from project_copy import copy_project

    target, before = _outside_file(tmp_path)
    work = copy_project(tmp_path / "p", ("Snakefile", "params.yaml", "workflow", "src"))
    (work / LOCK_FILE).parent.mkdir()
    (work / LOCK_FILE).symlink_to(target)
    proc = subprocess.run(["snakemake", "-n", "--cores", "1"], cwd=work, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(work / "src")}, timeout=300)
    assert proc.returncode != 0
    assert f"{work / LOCK_FILE}: is a symbolic link (to {target})" in proc.stdout + proc.stderr
    assert _snapshot(target) == before


def test_the_lock_folder_linked_outside_is_refused(tmp_path):
    outside = tmp_path / "outside-folder"
    outside.mkdir()
    project = tmp_path / "project"
    project.mkdir()
    (project / LOCK_FILE.parent).symlink_to(outside)
    with pytest.raises(PipelineError, match=r"\.cpsl: the project's lock folder is a symbolic link"):
        hold_for_snakemake(project)
    assert list(outside.iterdir()) == []


def test_a_gpu_slot_lock_linked_outside_is_refused_and_the_target_kept(tmp_path):
    target, before = _outside_file(tmp_path)
    folder = tmp_path / "gpu-locks"
    folder.mkdir()
    (folder / "gpu0-slot0.lock").symlink_to(target)
    with pytest.raises(PipelineError, match=r"gpu0-slot0\.lock: is a symbolic link"):
        gpu_slots.try_lease(1, count=1, slots=1, folder=folder)
    assert _snapshot(target) == before


# ------------------------------------------------------------------------------------------------ run folders
def test_a_run_folder_that_is_a_link_is_refused_by_train_evaluate_and_report(world, tmp_path, capsys):
    text, cache = world
    params = small_params(text, **ONE_EPOCH)
    params_file = write_params(tmp_path / "params.yaml", params)
    outside = tmp_path / "outside-run"
    outside.mkdir()
    (outside / "metrics.json").write_text("{}\n")
    os.utime(outside / "metrics.json", ns=(10**18, 10**18))
    before = sorted(p.name for p in outside.iterdir()), _snapshot(outside / "metrics.json")
    results = tmp_path / "results"
    results.mkdir()
    run = results / configured_runs(params)[0]
    run.symlink_to(outside)
    for stage in (["train", "--seed", "0", "--ablation", run.name.split("-")[0], "--data", str(cache), "--out",
                   str(run)], ["evaluate", "--data", str(cache), "--run", str(run)]):
        assert main([*stage, "--params", str(params_file)]) == 1
        line = _one_line(capsys.readouterr().err)
        assert line.startswith(f"cpsl {stage[0]}: error: {run}: run folder is a symbolic link (to {outside})"), line
    with pytest.raises(PipelineError, match=rf"{run.name}: run folder is a symbolic link"):
        run_report(params, results_dir=results, out_dir=tmp_path / "reports")
    assert (sorted(p.name for p in outside.iterdir()), _snapshot(outside / "metrics.json")) == before
    assert not (tmp_path / "reports").exists()
    assert issubclass(ReportError, PipelineError)


# ------------------------------------------------------------------------------------------------ mirror files
def test_a_mirror_file_that_is_a_relative_link_is_placed_as_the_file_it_points_to(tmp_path, monkeypatch):
    """The link's target is what is checked, placed and hashed; a hard link of the link itself would resolve,
    from the raw folder, to a different file that nothing checked."""
    def no_reflink(src, dest):  # ext4/tmpfs: prepare falls back to a hard link, where the link was linked
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(mirror_mod, "_reflink", no_reflink)
    mirror, raw = tmp_path / "mirror", tmp_path / "raw"
    files = write_fake_mirror(mirror, "mosi")
    labels = files["labels"]
    (mirror / "store").mkdir()
    real = mirror / "store" / labels.name
    labels.rename(real)
    labels.symlink_to(Path("store") / labels.name)  # relative
    decoy_files = write_fake_mirror(tmp_path / "decoy", "mosi")  # a valid file with other values
    (raw / "store").mkdir(parents=True)
    shutil.copy(decoy_files["acoustic"], raw / "store" / labels.name)
    manifest = prepare_mod.run_prepare(make_params("mosi", mirror=str(mirror)), raw)
    placed = raw / labels.name
    assert not placed.is_symlink()
    assert sha256_file(placed) == sha256_file(real) == manifest["files"]["labels"]["sha256"]
    assert os.stat(placed).st_ino == os.stat(real).st_ino  # the hard link is to the real file
    assert read_manifest(raw)["files"]["labels"]["sha256"] == sha256_file(real)


# ------------------------------------------------------------------------------------------------ manifest names
@pytest.fixture(scope="module")
def demo_raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("demo_raw") / "raw"
    prepare_mod.run_prepare(make_params("demo"), raw)
    return raw


def _raw_copy(demo_raw: Path, tmp_path: Path) -> Path:
    raw = tmp_path / "project" / "raw"
    shutil.copytree(demo_raw, raw)
    return raw


def _parent(raw: Path, name: str) -> str:
    (raw.parent / "elsewhere").mkdir()
    shutil.copy(raw / name, raw.parent / "elsewhere" / name)
    return f"../elsewhere/{name}"


def _absolute(raw: Path, name: str) -> str:
    (raw.parent / "abs").mkdir()
    shutil.copy(raw / name, raw.parent / "abs" / name)
    return str(raw.parent / "abs" / name)


def _subfolder(raw: Path, name: str) -> str:
    (raw / "sub").mkdir()
    shutil.copy(raw / name, raw / "sub" / name)
    return f"sub/{name}"


@pytest.mark.parametrize("forge", [_parent, _absolute, _subfolder, lambda raw, name: ".."],
                         ids=["parent", "absolute", "subfolder", "dotdot"])
def test_a_manifest_file_name_outside_its_folder_is_refused_naming_manifest_and_role(demo_raw, tmp_path, forge):
    raw = _raw_copy(demo_raw, tmp_path)
    manifest = json.loads((raw / "manifest.json").read_text())
    # the named file exists, with the recorded size and bytes: only its place betrays it
    manifest["files"]["labels"]["name"] = forge(raw, manifest["files"]["labels"]["name"])
    (raw / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RawFolderError) as info:
        read_manifest(raw)
    message = str(info.value)
    assert message.startswith(f"{raw / 'manifest.json'}: key 'files.labels.name' must be a plain file name"), message
    assert "\n" not in message


def test_a_manifest_folds_name_outside_its_folder_is_refused(demo_raw, tmp_path):
    raw = _raw_copy(demo_raw, tmp_path)
    manifest = json.loads((raw / "manifest.json").read_text())
    shutil.copy(raw / "folds.json", tmp_path / "project" / "folds.json")
    manifest["folds"] = "../folds.json"
    (raw / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RawFolderError, match=r"manifest\.json: key 'folds' must be a plain file name"):
        read_manifest(raw)


def test_a_raw_file_replaced_by_a_link_is_refused_by_align(demo_raw, tmp_path):
    raw = _raw_copy(demo_raw, tmp_path)
    manifest = json.loads((raw / "manifest.json").read_text())
    real = raw / manifest["files"]["words"]["name"]
    elsewhere = tmp_path / "elsewhere.csd"
    real.rename(elsewhere)
    real.symlink_to(elsewhere)  # same bytes, but not a file prepare placed
    with pytest.raises(RawFolderError, match=r"listed in .*manifest\.json as 'words' is a symbolic link"):
        read_manifest(raw)


def test_prepare_repairs_a_raw_file_replaced_by_a_link_that_align_refuses(demo_raw, tmp_path, capsys):
    """prepare's "already complete" check is align's reader (cpsl.formats.raw_folder): a folder align refuses with
    "rerun `cpsl prepare`" is rebuilt by that rerun (was: the link's bytes matched, prepare said "nothing to do"
    and align kept refusing)."""
    raw = _raw_copy(demo_raw, tmp_path)
    words = raw / read_manifest(raw)["files"]["words"]["name"]
    elsewhere = tmp_path / "elsewhere.csd"
    words.rename(elsewhere)
    words.symlink_to(elsewhere)
    before = (elsewhere.read_bytes(), elsewhere.stat().st_mtime_ns)
    capsys.readouterr()
    prepare_mod.run_prepare(make_params("demo"), raw)
    assert "prepared" in capsys.readouterr().out
    assert not words.is_symlink() and words.is_file()
    assert read_manifest(raw)["files"]["words"]["sha256"] == sha256_file(words)
    assert (elsewhere.read_bytes(), elsewhere.stat().st_mtime_ns) == before  # the link replaced, not written through


def test_prepare_repairs_a_folds_file_that_align_refuses(tmp_path, capsys):
    """The same for folds.json under a mirror (prepare used to check only that it exists): a video in two splits."""
    mirror, raw = tmp_path / "mirror", tmp_path / "raw"
    write_fake_mirror(mirror, "mosi")
    params = make_params("mosi", mirror=str(mirror))
    prepare_mod.run_prepare(params, raw)
    folds = json.loads((raw / "folds.json").read_text())
    (raw / "folds.json").write_text(json.dumps({**folds, "test": folds["test"] + folds["train"][:1]}))
    with pytest.raises(RawFolderError, match=r"folds\.json: video '.*' is in both 'train' and 'test'"):
        read_folds(raw / "folds.json")
    capsys.readouterr()
    prepare_mod.run_prepare(params, raw)
    assert "prepared" in capsys.readouterr().out
    assert json.loads((raw / "folds.json").read_text()) == folds
