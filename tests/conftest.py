"""Fixtures every test file shares (pytest finds this file itself; test files do not import it)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NamedTuple

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """torch on one thread for each test file, restored afterwards: 2 shared cores, so a second thread per process
    only contends. Every file gets it, not only those that train: no test relies on more threads (the benchmarks
    that set their own thread count run in subprocesses, whose count comes from OMP_NUM_THREADS, not from here)."""
    import torch  # here, not at the top: collecting a torch-free test file should not pay for torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    """Hand the longest files to the workers first. test_e2e_workflows.py is one chain of ten end-to-end tests on
    one project (about a third of the suite's CPU time); started last, as xdist's own order (most tests first) had
    it, it ran on one worker for minutes after the other had finished. Files with more tests marked `slow` come
    first, then files with more tests; inside a file the order is kept (its tests may build on each other)."""
    by_file: dict[str, list] = {}
    for item in items:
        by_file.setdefault(item.nodeid.split("::")[0], []).append(item)

    def cost(tests):
        return (sum(1 for t in tests if t.get_closest_marker("slow")), len(tests))

    ordered = sorted(by_file.values(), key=cost, reverse=True)  # stable: ties keep the collection order
    items[:] = [item for tests in ordered for item in tests]


class FinishedRun(NamedTuple):
    root: Path    # the project folder: read only, copy it (project_copy.copy_finished_project) to run anything in it
    output: str   # what `snakemake --cores 2` printed


@pytest.fixture(scope="session")
def tiny_demo_snakemake_run(tmp_path_factory) -> FinishedRun:
    """The tiny demo (6 videos, 1 epoch, seed 0, row A6) run once by Snakemake for the whole test session: the
    Snakemake front tests read its logs and benchmarks, the DVC sharing tests adopt its outputs (`dvc commit`)
    instead of training the same run again. Under xdist each worker has its own session, so the first worker
    that asks builds it in the folder all workers share, under a file lock; the others wait and reuse it."""
    from filelock import FileLock  # (a dependency of torch and of huggingface_hub)
    from project_copy import run_tiny_demo_with_snakemake

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder above each worker's own
    root, printed = base / "tiny-demo-snakemake", base / "tiny-demo-snakemake.out"
    with FileLock(f"{root}.lock"):
        if not printed.is_file():  # written last: a run that failed part-way is built again
            shutil.rmtree(root, ignore_errors=True)
            partial = printed.with_suffix(".partial")
            partial.write_text(run_tiny_demo_with_snakemake(root))
            partial.replace(printed)
    return FinishedRun(root, printed.read_text())
