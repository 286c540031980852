"""Fixtures every test file shares (pytest finds this file itself; test files do not import it)."""
from __future__ import annotations

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
