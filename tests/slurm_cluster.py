"""A throw-away single-node SLURM cluster for tests: munged, slurmctld and slurmd from Debian's packages
(`slurm-wlm`, `munge`; .ci/run installs them), all in the foreground from one folder, no systemd, no
slurmdbd. The node declares fake GPUs (gres `gpu` backed by character devices such as /dev/null), so
`--gpus=N` jobs are scheduled and their steps get CUDA_VISIBLE_DEVICES like on a real GPU node.

    with SlurmCluster(tmp_path, gpus=2) as cluster:
        subprocess.run(["sbatch", ...], env=cluster.env)

Only the PIDs this object started are ever stopped.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

NODE = "cpslnode"
PARTITION = "cpsl"
# Distinct character devices stand in for /dev/nvidia0.. (slurmd only stats them; with task/none nothing
# is constrained by cgroups).
FAKE_GPU_FILES = ["/dev/null", "/dev/zero", "/dev/full", "/dev/urandom"]


def missing_tools() -> list[str]:
    return [t for t in ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "sinfo")
            if shutil.which(t) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    def __init__(self, folder: Path, gpus: int = 2, cpus: int = 8, mem_mb: int = 16000, min_job_age_s: int = 900):
        assert gpus <= len(FAKE_GPU_FILES)
        self.dir = Path(folder)
        self.gpus, self.cpus, self.mem_mb, self.min_job_age_s = gpus, cpus, mem_mb, min_job_age_s
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.dir / "slurm.conf"
        self.bin = self.dir / "bin"
        # SLURM_CONF points every client at this cluster; bin/ goes first on PATH for the srun shim below.
        self.env = {**os.environ, "SLURM_CONF": str(self.conf),
                    "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"}

    # -- configuration -------------------------------------------------------------------------------
    def _write_config(self) -> None:
        d = self.dir
        for sub in ("state", "spool", "munge", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "munge").chmod(0o700)
        key = d / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o600)
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(f"""\
ClusterName=cpsltest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge/munge.sock
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
# without slurmdbd only squeue/scontrol know a job; keep finished ones listed long after the run
MinJobAge={self.min_job_age_s}
ReturnToService=2
# the node is declared bigger than this machine may be (CPUs, memory): trust the config
SlurmdParameters=config_overrides
SchedulerParameters=sched_interval=2
NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.mem_mb} \
Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
""")
        # snakemake-executor-plugin-slurm-jobstep drops every SLURM_* variable but a few (SLURM_CONF too) before
        # its srun; a real cluster keeps slurm.conf where srun looks by default, this one does not, so the
        # srun found first on PATH restores SLURM_CONF.
        self.bin.mkdir(exist_ok=True)
        shim = self.bin / "srun"
        shim.write_text(f'#!/bin/sh\nSLURM_CONF={self.conf} exec {shutil.which("srun")} "$@"\n')
        shim.chmod(0o755)
        (d / "gres.conf").write_text("".join(f"NodeName={NODE} Name=gpu File={f}\n"
                                             for f in FAKE_GPU_FILES[: self.gpus]))

    # -- life cycle ----------------------------------------------------------------------------------
    def _start(self, name: str, cmd: list[str]) -> None:
        log = open(self.dir / "log" / f"{name}.out", "wb")
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            stdin=subprocess.DEVNULL)
        log.close()

    def start(self, timeout_s: float = 90) -> "SlurmCluster":
        self._write_config()
        d = self.dir
        self._start("munged", ["munged", "-F", "--force", f"--socket={d}/munge/munge.sock",
                               f"--key-file={d}/munge/munge.key", f"--pid-file={d}/munge/munged.pid",
                               f"--seed-file={d}/munge/munged.seed", f"--log-file={d}/log/munged.log"])
        self._wait(lambda: (d / "munge" / "munge.sock").exists(), 20, "munged socket")
        self._start("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._wait(lambda: self._ok(["scontrol", "ping"], "UP"), timeout_s, "slurmctld")
        self._start("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", NODE])
        self._wait(lambda: self._ok(["sinfo", "-h", "-N", "-o", "%T"], "idle"), timeout_s, "node idle")
        return self

    def _ok(self, cmd: list[str], needle: str) -> bool:
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True)
        return out.returncode == 0 and needle in out.stdout

    def _wait(self, cond, timeout_s: float, what: str) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead} exited while waiting for {what}:\n{self.logs()}")
            if cond():
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out waiting for {what}:\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for f in sorted((self.dir / "log").glob("*")):
            parts.append(f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop exactly the daemons this object started (slurmd first), waiting for each."""
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self.procs.items()}

    def __enter__(self) -> "SlurmCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
