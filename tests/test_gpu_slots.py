"""GPU leases (cpsl.runtime.gpu_slots) on a CPU machine, with the device list faked by a count.

Concurrent jobs never hold the same device slot, a killed holder frees its devices, slots let several jobs
share a device (least-loaded first), and `cpsl train` leases before it launches torchrun."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cpsl.runtime import gpu_slots
from cpsl.runtime.gpu_slots import GpuLeaseError, lease, try_lease

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("CUDA_VISIBLE_DEVICES", "WORLD_SIZE", "CPSL_GPU_SLOTS", "CPSL_GPU_LEASE", "CPSL_GPU_WAIT_S"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CPSL_GPU_LOCK_DIR", str(tmp_path / "locks"))
    return tmp_path / "locks"


def test_one_device_per_lease_until_none_is_free(tmp_path):
    held = [try_lease(1, count=4, slots=1, folder=tmp_path) for _ in range(4)]
    assert sorted(h.devices[0] for h in held) == [0, 1, 2, 3]
    assert try_lease(1, count=4, slots=1, folder=tmp_path) is None
    held[2].release()
    again = try_lease(1, count=4, slots=1, folder=tmp_path)
    assert again.devices == held[2].devices
    for h in held + [again]:
        h.release()


def test_multi_device_lease_is_all_or_nothing(tmp_path):
    a = try_lease(2, count=3, slots=1, folder=tmp_path)
    assert len(set(a.devices)) == 2
    assert try_lease(2, count=3, slots=1, folder=tmp_path) is None  # one device left: nothing held
    b = try_lease(1, count=3, slots=1, folder=tmp_path)
    assert b.devices == sorted(set(range(3)) - set(a.devices))
    with pytest.raises(GpuLeaseError, match="needs 4 GPUs but the machine has 3"):
        lease(4, count=3, slots=1, folder=tmp_path)
    a.release(), b.release()


def test_slots_share_devices_least_loaded_first(tmp_path):
    held = [try_lease(1, count=2, slots=3, folder=tmp_path) for _ in range(6)]
    devices = [h.devices[0] for h in held]
    assert devices[:2] == [0, 1] and sorted(devices) == [0, 0, 0, 1, 1, 1]  # spread before stacking
    assert try_lease(1, count=2, slots=3, folder=tmp_path) is None
    for h in held:
        h.release()


def test_lease_waits_then_times_out(tmp_path):
    held = try_lease(1, count=1, slots=1, folder=tmp_path)
    start = time.monotonic()
    with pytest.raises(GpuLeaseError, match="no 1 free GPU"):
        lease(1, count=1, slots=1, folder=tmp_path, wait_s=0.5, poll_s=0.1)
    assert time.monotonic() - start >= 0.5
    held.release()


WORKER = r"""
import json, sys, time
from cpsl.runtime.gpu_slots import lease
folder, count, slots, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
with lease(1, count=count, slots=slots, folder=folder, poll_s=0.05) as held:
    start = time.time()
    print("held", held.devices[0], flush=True)
    time.sleep(hold)
    end = time.time()
print(json.dumps({"device": held.devices[0], "start": start, "end": end}), flush=True)
"""


def _worker(folder, count, slots, hold) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, str(folder), str(count), str(slots), str(hold)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": SRC})


def test_concurrent_processes_never_share_a_device(tmp_path):
    # 8 jobs on 3 devices: they queue on the locks; intervals on one device must never overlap.
    procs = [_worker(tmp_path, 3, 1, 0.4) for _ in range(8)]
    records = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        records.append(json.loads(out.strip().splitlines()[-1]))
    by_device: dict[int, list] = {}
    for r in records:
        by_device.setdefault(r["device"], []).append((r["start"], r["end"]))
    assert set(by_device) == {0, 1, 2}
    for spans in by_device.values():
        spans.sort()
        assert all(prev_end <= next_start for (_, prev_end), (next_start, _) in zip(spans, spans[1:]))


def test_killed_holder_frees_its_device(tmp_path):
    holder = _worker(tmp_path, 1, 1, 600)
    assert holder.stdout.readline().split() == ["held", "0"]
    assert try_lease(1, count=1, slots=1, folder=tmp_path) is None
    holder.send_signal(signal.SIGKILL)  # no cleanup code runs: the kernel drops the flock
    holder.wait(timeout=30)
    holder.stdout.close()
    got = try_lease(1, count=1, slots=1, folder=tmp_path)
    assert got is not None and got.devices == [0]
    got.release()


def test_job_devices_sets_cuda_visible_devices_and_restores(clean_env, monkeypatch):
    monkeypatch.setenv("CPSL_GPU_COUNT", "2")
    with gpu_slots.job_devices(1, "auto") as held:
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0" and held.devices == [0]
        other = try_lease(1, count=2, slots=1, folder=clean_env)  # another job meanwhile gets the other one
        assert other.devices == [1]
        other.release()
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    with gpu_slots.job_devices(2, "cuda") as held:
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1" and held.devices == [0, 1]
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_job_devices_respects_scheduler_cpu_and_gpuless_machines(clean_env, monkeypatch):
    monkeypatch.setenv("CPSL_GPU_COUNT", "2")
    with gpu_slots.job_devices(1, "cpu") as held:
        assert held is None and "CUDA_VISIBLE_DEVICES" not in os.environ
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # what SLURM sets in a job step
    with gpu_slots.job_devices(1, "auto") as held:
        assert held is None and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("CPSL_GPU_COUNT", "0")
    with gpu_slots.job_devices(1, "auto") as held:
        assert held is None
    monkeypatch.setenv("CPSL_GPU_COUNT", "2")
    monkeypatch.setenv("CPSL_GPU_LEASE", "0")
    with gpu_slots.job_devices(1, "auto") as held:
        assert held is None


def test_train_leases_its_gpus_before_launching_torchrun(clean_env, monkeypatch, tmp_path):
    from cpsl.config.schema import load_params
    from cpsl.stages import train as stage
    from cpsl.train import distributed

    monkeypatch.setenv("CPSL_GPU_COUNT", "3")
    seen = {}

    def fake_relaunch(nproc, cli_args, pass_fds=()):
        seen["env"] = os.environ["CUDA_VISIBLE_DEVICES"]
        seen["fds"] = list(pass_fds)
        # while the job runs, its two devices are taken: only one is left for anyone else
        seen["two_more"] = try_lease(2, count=3, slots=1, folder=clean_env)
        other = try_lease(1, count=3, slots=1, folder=clean_env)
        seen["other"] = other.devices
        other.release()
        return 0

    monkeypatch.setattr(distributed, "relaunch", fake_relaunch)
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    params["execution"]["nproc"] = 2
    assert stage.run_train(params, seed=0, ablation="A0", out_dir=tmp_path / "run") == 0
    assert seen["env"] == "0,1" and len(seen["fds"]) == 2
    assert seen["two_more"] is None and seen["other"] == [2]
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    after = try_lease(3, count=3, slots=1, folder=clean_env)  # released at the end of the job
    assert after is not None
    after.release()


# ------------------------------------------------------------------ the default lock folder: one per user and machine
@pytest.fixture
def lock_base(monkeypatch, tmp_path):
    """The default folder's parent (/tmp in use) moved into tmp_path, so these tests never touch the real one."""
    monkeypatch.delenv("CPSL_GPU_LOCK_DIR", raising=False)
    monkeypatch.setattr(gpu_slots, "LOCK_BASE", tmp_path)
    return tmp_path


def test_default_lock_folder_is_per_user_and_the_same_from_any_working_directory(lock_base, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    first = gpu_slots.lock_dir()
    assert first == lock_base / f"cpsl-gpu-locks-{os.getuid()}"
    assert first.is_dir() and (first.stat().st_mode & 0o777) == 0o700  # no one else may plant or hold our locks
    other_checkout = tmp_path / "other-checkout"
    other_checkout.mkdir()
    monkeypatch.chdir(other_checkout)
    assert gpu_slots.lock_dir() == first  # not relative to the checkout (the old .cpsl/gpu-locks)


@pytest.mark.parametrize("plant, fragment", [
    ("link", "the GPU lock folder is a symbolic link (to "),
    ("foreign", "the GPU lock folder belongs to user id 54321, not to you"),
    ("open", "the GPU lock folder is writable by other users (mode 777); chmod 700 it"),
    ("file", "the GPU lock folder is not a folder"),
])
def test_a_planted_default_lock_folder_is_refused_in_one_line(lock_base, tmp_path, plant, fragment):
    folder = lock_base / f"cpsl-gpu-locks-{os.getuid()}"
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    if plant == "link":
        folder.symlink_to(target)
    elif plant == "file":
        folder.write_text("not a folder")
    else:
        folder.mkdir(mode=0o700)
        if plant == "foreign":
            if os.getuid() != 0:
                pytest.fail("this case needs root to give the folder to another user (CI runs as root)")
            os.chown(folder, 54321, -1)
        else:
            folder.chmod(0o777)
    with pytest.raises(GpuLeaseError) as caught:
        lease(1, count=1, slots=1)
    message = str(caught.value)
    assert message.startswith(f"{folder}: ") and fragment in message and "\n" not in message
    assert list(target.iterdir()) == []  # nothing written through the link


def test_an_explicit_lock_folder_still_wins(lock_base, monkeypatch, tmp_path):
    monkeypatch.setenv("CPSL_GPU_LOCK_DIR", str(tmp_path / "shared"))
    assert gpu_slots.lock_dir() == tmp_path / "shared"
    assert not (lock_base / f"cpsl-gpu-locks-{os.getuid()}").exists()


PROBE = r"""
import json, os, sys, time
from pathlib import Path
from cpsl.runtime import gpu_slots
from cpsl.runtime.gpu_slots import job_devices
# the default, machine-wide lock folder, under the test's own folder: other checkouts' tests leave these GPUs alone
gpu_slots.LOCK_BASE = Path(os.environ["PROBE_LOCK_BASE"])
meet = Path(sys.argv[1])
with job_devices(1, "auto", "probe") as held:
    start = time.time()
    (meet / f"holds-{os.getpid()}").touch()
    # hold the device until both experiments hold one (not a fixed sleep: queue workers start seconds apart)
    deadline = time.monotonic() + 120
    while len(list(meet.glob("holds-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    end = time.time()
json.dump({"device": held.devices[0], "start": start, "end": end}, open("lease.json", "w"))
"""


def test_two_queued_dvc_experiments_lease_different_gpus(tmp_path):
    """`dvc queue start --jobs 2` runs each experiment in its own temporary copy of the repository: with the old
    default (.cpsl/gpu-locks, relative) both leased GPU 0 from their own folder. The probe stage leases as `cpsl
    train`/`evaluate` do (gpu_slots.job_devices), holds the device until the other experiment holds one too and
    records it as a metric."""
    project = tmp_path / "project"
    project.mkdir()
    meet = tmp_path / "meet"  # where each probe says that it holds a device (an absolute path: outside the copies)
    meet.mkdir()
    (project / "probe.py").write_text(PROBE)
    (project / "params.yaml").write_text("tag: 0\n")
    (project / "dvc.yaml").write_text(
        f"stages:\n  probe:\n    cmd: python3 probe.py {meet}\n    deps: [probe.py]\n    params: [tag]\n"
        "    metrics:\n      - lease.json:\n          cache: false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CPSL_") and k not in ("CUDA_VISIBLE_DEVICES",
                                                                                        "WORLD_SIZE")}
    env.update(PYTHONPATH=SRC, CPSL_GPU_COUNT="2", DVC_NO_ANALYTICS="1",  # two faked GPUs, the default lock folder
               PROBE_LOCK_BASE=str(tmp_path))

    def sh(*cmd: str) -> str:
        proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    sh("git", "init", "-q")
    sh("dvc", "init", "-q")
    sh("git", "add", "-A")
    sh("git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qm", "init")
    sh("dvc", "exp", "run", "--queue", "-S", "tag=1")
    sh("dvc", "exp", "run", "--queue", "-S", "tag=2")
    # the workers it starts inherit its stdout and stderr and keep them open until they exit (10 s after the queue
    # is empty): into a file, not a pipe subprocess.run would wait on
    with open(tmp_path / "queue-start.log", "w") as log:
        subprocess.run(["dvc", "queue", "start", "--jobs", "2"], cwd=project, env=env, stdout=log,
                       stderr=subprocess.STDOUT, timeout=240, check=True)
    deadline = time.monotonic() + 180

    def collected() -> int:  # experiments dvc has stored (a git ref each): a cheap look, unlike a dvc call
        refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=project,
                              capture_output=True, text=True, check=True).stdout
        return len(re.findall(r"^refs/exps/[0-9a-f]{2}/[0-9a-f]{38}/", refs, re.M))

    # a `dvc queue status` every 15 s only (each costs seconds of CPU): a failed probe stores no experiment
    polls = 0
    while collected() < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        polls += 1
        if polls % 75 == 0 and not re.search(r"\b(Queued|Running)\b", sh("dvc", "queue", "status")):
            break
    while re.search(r"\b(Queued|Running)\b", status := sh("dvc", "queue", "status")):
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert len(re.findall(r"\bSuccess\b", status)) == 2, status
    sh("dvc", "queue", "stop")  # the idle workers leave now, not 10 s after the test
    leases = [exp["data"]["metrics"]["lease.json"]["data"]
              for rev in json.loads(sh("dvc", "exp", "show", "--json")) for branch in rev.get("experiments") or []
              for exp in branch["revs"]]
    assert len(leases) == 2, leases
    a, b = leases
    assert a["start"] < b["end"] and b["start"] < a["end"], f"the experiments did not overlap: {leases}"
    assert a["device"] != b["device"], f"two concurrent experiments leased one GPU: {leases}"
