"""Snakefile and dvc.yaml must describe the same pipeline: same stages, commands, inputs, outputs,
and DVC's params per stage must be exactly cpsl.config.schema.STAGE_PARAMS (which the Snakefile uses)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cpsl.config.schema import STAGE_PARAMS

REPO = Path(__file__).resolve().parents[1]


def snakemake_jobs(workdir: Path) -> list[dict]:
    """Every job of the default target, parsed from a forced dry run."""
    proc = subprocess.run(
        ["snakemake", "-n", "-p", "--forceall", "--cores", "1"], cwd=workdir, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    jobs = []
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", out):
        m = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if not m or m.group(1) == "all":
            continue
        # (a flagged output is printed with its flag, e.g. "data/raw/demo/manifest.json (update)")
        def field(name, block=block):
            found = re.search(rf"^\s+{name}: (.*)$", block, re.M)
            return [re.sub(r" \(update\)$", "", p.strip()) for p in found.group(1).split(",")] if found else []
        cmd = re.search(r"^Shell command: (.*)$", block, re.M).group(1).strip()
        log = field("log")
        # every job writes its command's output to its own log (issue 24); DVC runs the same command unredirected
        if log:
            cmd = cmd.removesuffix(f" > {log[0]} 2>&1")
        res = dict(kv.split("=", 1) for kv in field("resources")) if re.search(r"^\s+resources: ", block, re.M) else {}
        jobs.append({"stage": m.group(1), "cmd": cmd, "deps": set(field("input")), "outs": set(field("output")),
                     "resources": res, "log": log, "benchmark": field("benchmark")})
    return jobs


def _expand_row_code(dep: str, workdir: Path) -> set[str]:
    """A DVC dep on a row's link folder (workflow/row_code/<row>, cpsl.runtime.deps.write_row_code) as the repository
    files
    its links point at (DVC hashes those files); any other dep as itself."""
    from cpsl.runtime import deps

    folder = workdir / dep
    if not dep.startswith(deps.ROW_CODE_DIR + "/"):
        return {dep}
    assert folder.is_dir(), f"{dep}: missing; run `cpsl deps --write-dvc`"
    return {Path(p.resolve()).relative_to(workdir.resolve()).as_posix() for p in folder.rglob("*") if p.is_symlink()}


def dvc_stages(workdir: Path) -> list[dict]:
    from dvc.repo import Repo

    stages = []
    with Repo(str(workdir)) as repo:
        for stage in repo.index.stages:
            params = [list(d.params) for d in stage.deps if hasattr(d, "params")]
            stages.append({
                "stage": stage.name.split("@")[0],
                "cmd": stage.cmd,
                "deps": set().union(*(_expand_row_code(str(d.def_path), workdir)
                                      for d in stage.deps if not hasattr(d, "params"))),
                "row": stage.name.split("@")[1].split("-")[0] if "@" in stage.name else None,
                "outs": {str(o.def_path) for o in stage.outs},
                "params": params[0] if params else [],
            })
    return stages


def _covered(path: str, by: set[str]) -> bool:
    return any(path == b or path.startswith(b.rstrip("/") + "/") for b in by)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    # Work on a copy so a dry run never touches the checkout's .snakemake state.
    work = tmp_path_factory.mktemp("parity")
    for name in ("Snakefile", "dvc.yaml", "params.yaml", "workflow", "profiles", "src", ".dvc", ".dvcignore"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, work / name, symlinks=True)  # workflow/row_code: links stay links
        else:
            shutil.copy(src, work / name)
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    return snakemake_jobs(work), dvc_stages(work)


# Snakemake's own extra: one table of its per-job benchmarks (DVC has none)
SNAKEMAKE_ONLY = {"benchmarks"}


def test_same_stage_instances(pipelines):
    smk, dvc = pipelines
    smk = [j for j in smk if j["stage"] not in SNAKEMAKE_ONLY]
    def count(jobs):
        return sorted((j["stage"], j["cmd"]) for j in jobs)

    assert count(smk) == count(dvc)
    stages = {j["stage"] for j in smk}
    assert stages == {"prepare", "align", "train", "evaluate", "report"}
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert sum(j["stage"] == "train" for j in smk) == len(params["ablations"]) * len(params["train"]["seeds"])


def test_same_outputs_and_inputs(pipelines):
    smk, dvc = pipelines
    by_cmd = {(d["stage"], d["cmd"]): d for d in dvc}
    for job in smk:
        if job["stage"] in SNAKEMAKE_ONLY:
            continue
        twin = by_cmd[(job["stage"], job["cmd"])]
        if job["stage"] == "prepare":  # Snakemake's output is the raw folder's manifest, written last (data.smk)
            assert job["outs"] == {"data/raw/demo/manifest.json"} and twin["outs"] == {"data/raw/demo"}
            continue
        assert job["outs"] == twin["outs"], job["stage"]
        # DVC may depend on a folder where Snakemake lists the files in it (report on results/<dataset>):
        # every Snakemake input lies under a DVC dep, and every DVC dep covers some Snakemake input.
        assert all(_covered(p, twin["deps"]) for p in job["deps"]), (job["stage"], job["deps"], twin["deps"])
        assert all(any(_covered(p, {d}) for p in job["deps"]) for d in twin["deps"]), (job["stage"], twin["deps"])


def test_dvc_params_are_the_stage_slices(pipelines):
    _, dvc = pipelines
    for stage in dvc:
        assert sorted(stage["params"]) == sorted(STAGE_PARAMS[stage["stage"]]), stage["stage"]


def test_no_data_stage_depends_on_cp():
    for stage in ("prepare", "align"):
        assert not any(p == "cp" or p.startswith("cp.") for p in STAGE_PARAMS[stage])
    assert "cp" in STAGE_PARAMS["train"]


def _dry_run(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["snakemake", "-n", "--cores", "1", "--forceall", *extra], cwd=workdir,
                          capture_output=True, text=True)


def test_grid_target_runs_every_table2_row_once_as_separate_jobs(tmp_path):
    from cpsl.config.ablations import ABLATIONS, ALIASES

    work = tmp_path / "grid"
    work.mkdir()
    for name in ("Snakefile", "params.yaml", "workflow", "src"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    proc = _dry_run(work, "--config", "grid=true")
    assert proc.returncode == 0, proc.stderr
    seeds = yaml.safe_load((REPO / "params.yaml").read_text())["train"]["seeds"]
    counts = dict(re.findall(r"^(train|evaluate)\s+(\d+)$", proc.stdout, re.M))
    # 17 paper rows, three of which repeat another row's switches (trained once), plus T0
    distinct = len(ABLATIONS) - len(ALIASES)
    assert distinct == 15
    assert int(counts["train"]) == int(counts["evaluate"]) == distinct * len(seeds)
    trained = set(re.findall(r"cpsl train --ablation (\w+)", _dry_run(work, "--config", "grid=true", "-p").stdout))
    assert trained == set(ABLATIONS) - set(ALIASES)

    # A param passed through --config would never reach the stages (they read params.yaml): refused; so is a key
    # that is neither a switch nor a param (issue 21: it was called a param), naming the switches.
    refused = _dry_run(work, "--config", "ablations=[A0]")
    assert refused.returncode != 0 and "edit params.yaml" in refused.stdout + refused.stderr
    refused = _dry_run(work, "--config", "ablation=A0")
    assert refused.returncode != 0 and "--config ablation: not a workflow switch" in refused.stdout


def test_both_engines_keep_the_raw_folder_when_prepare_reruns():
    # `dvc exp run` without a dvc.lock (e.g. after a Snakemake run) deletes every stage's outputs before
    # running it, and Snakemake deletes a job's outputs before rerunning it: the raw downloads must survive
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    outs = dvc["stages"]["prepare"]["outs"]
    # cache: false: DVC keeps no second copy of the raw data and never moves/chmods it (issue 17)
    assert outs == [{"data/raw/${dataset}": {"persist": True, "cache": False}}]
    rule = (REPO / "workflow" / "rules" / "data.smk").read_text().split("rule prepare:")[1].split("\nrule ")[0]
    assert "update(str(paths.manifest_path(DATASET)))" in rule


def test_dvc_exp_run_without_lock_keeps_the_raw_folder(tmp_path):
    from dvc.repo import Repo

    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True)
    raw = tmp_path / "data" / "raw" / "demo"
    raw.mkdir(parents=True)
    (raw / "precious.csd").write_text("a finished download")
    with Repo(str(tmp_path)) as repo, repo.lock:
        stage = next(s for s in repo.index.stages if s.name == "prepare")
        stage.remove_outs(ignore_remove=False, force=False)  # what `dvc repro`/`exp run` does before running it
    assert (raw / "precious.csd").read_text() == "a finished download"


def test_gpu_resource_only_on_train_and_evaluate(pipelines, tmp_path):
    """`--resources gpu=N` / the SLURM executor see the GPUs a job needs: execution.nproc for train, one for
    evaluate, none for the data and report stages."""
    smk, _ = pipelines
    for job in smk:
        if job["stage"] in SNAKEMAKE_ONLY:
            continue
        want = {"train": "1", "evaluate": "1"}.get(job["stage"])
        assert job["resources"].get("gpu") == want, (job["stage"], job["resources"])

    work = tmp_path / "nproc"
    work.mkdir()
    for name in ("Snakefile", "workflow", "src"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, work / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["execution"]["nproc"] = 4
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    assert {j["resources"].get("gpu") for j in snakemake_jobs(work) if j["stage"] == "train"} == {"4"}


def _job_row(job: dict) -> str | None:
    """The row of a train/evaluate job: DVC's matrix item, or the run folder in Snakemake's outputs."""
    if job.get("row"):
        return job["row"]
    runs = {m.group(1) for o in job["outs"] for m in [re.search(r"results/[^/]+/(\w+)-seed\d+/", o)] if m}
    return runs.pop() if runs else None


def test_both_engines_declare_the_code_each_stage_runs(pipelines):
    """File-level code deps from the import graph (cpsl.runtime.deps), identical in both engines: per row for train and
    evaluate (the stage's kit + the row's own code: DVC's workflow/row_code/<row> links, expanded)."""
    from cpsl.runtime import deps

    smk, dvc = pipelines
    seen_rows = set()
    for job in [j for j in smk if j["stage"] not in SNAKEMAKE_ONLY] + dvc:
        code = {d for d in job["deps"] if d.startswith(deps.SRC_PREFIX)}
        if job["stage"] in deps.ROW_STAGES:
            row = _job_row(job)
            seen_rows.add(row)
            assert code == set(deps.row_files(job["stage"], row, root=REPO)), (job["stage"], row)
        else:
            assert code == set(deps.stage_files(job["stage"], root=REPO)), job["stage"]
    assert None not in seen_rows and seen_rows


def test_every_job_logs_to_its_own_file_and_train_jobs_are_benchmarked(pipelines):
    """Issue 24: `log:` on every rule, one file per job under logs/<dataset>/, the command's stdout and stderr
    redirected there (Snakemake names it on failure; profiles/default prints it); `benchmark:` on train, one record
    per job, all of them summarised by the `benchmarks` rule. Not on evaluate: Snakemake counts a benchmark as an
    output, so a run DVC retrained and evaluated would be evaluated again (tests/test_e2e_workflows.py)."""
    smk, _ = pipelines
    logs = [j["log"] for j in smk]
    assert all(len(log) == 1 and log[0].startswith("logs/demo/") for log in logs), logs
    assert len({log[0] for log in logs}) == len(smk)  # one file per job
    bench = {j["benchmark"][0] for j in smk if j["stage"] == "train"}
    assert len(bench) == sum(j["stage"] == "train" for j in smk)
    assert all(not j["benchmark"] for j in smk if j["stage"] != "train")
    summary = next(j for j in smk if j["stage"] == "benchmarks")
    assert bench <= summary["deps"] and summary["outs"] == {"reports/demo/benchmarks.md"}
    assert "reports/demo/summary.json" in summary["deps"]  # after the report, which swaps that folder in
    assert (REPO / "profiles/default/config.yaml").read_text().count("show-failed-logs: true") == 1


def test_snakemake_lint_is_clean(tmp_path):
    work = tmp_path / "lint"
    work.mkdir()
    for name in ("Snakefile", "params.yaml", "workflow", "profiles", "src"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, work / name)
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    proc = subprocess.run(["snakemake", "--lint"], cwd=work, capture_output=True, text=True)
    assert proc.returncode == 0 and "Congratulations" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
