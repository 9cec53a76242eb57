"""A real single-node Slurm cluster on localhost for tests and benchmarks: munged, slurmctld and
slurmd from Debian's `slurm-wlm` and `munge`, configured in a temp dir and stopped by PID.

  with LocalSlurm() as cluster:            # raises SlurmUnavailable with the reason if it cannot start
      subprocess.run(["sbatch", ...], env=cluster.env)

Two CPUs and half the machine's memory, `DefMemPerCPU` at the node's memory over its CPUs, so two
one-CPU jobs run at once. The scheduler runs every second (production clusters run it every 30-60 s) so tests don't
wait on it. There is no accounting database (no slurmdbd): `sacct` is disabled and finished jobs
are known to `scontrol show job` for `MinJobAge` (10 minutes here).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = "slurm-wlm munge"  # Debian packages (.ci/run installs them)


class SlurmUnavailable(RuntimeError):
    """The daemons cannot be started here; the message says why."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise SlurmUnavailable("no MemTotal in /proc/meminfo")


class LocalSlurm:
    """munged + slurmctld + slurmd in the foreground under this process, in a fresh temp dir."""

    def __init__(self, cpus: int = 2, timeout: float = 30.0):
        self.cpus = cpus
        self.timeout = timeout
        self.dir: Path | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.env: dict[str, str] = {}

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> LocalSlurm:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        missing = [d for d in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol") if not shutil.which(d)]
        if missing:
            raise SlurmUnavailable(f"{', '.join(missing)} not found (apt-get install {PACKAGES})")
        # Short path: munge's socket path must fit in a sockaddr_un (108 bytes).
        self.dir = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
        d = self.dir
        for sub in ("state", "spool", "log"):
            (d / sub).mkdir()
        key = d / "munge.key"
        key.write_bytes(os.urandom(128))  # a munge key is random bytes, owner-only
        key.chmod(0o600)
        user = pwd.getpwuid(os.getuid()).pw_name
        mem = _mem_mb() // 2
        conf = d / "slurm.conf"
        conf.write_text("\n".join([
            "ClusterName=echosynth-test",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            f"SlurmUser={user}",
            f"SlurmdUser={user}",
            "AuthType=auth/munge",
            f"AuthInfo=socket={d / 'munge.sock'}",
            "CredType=cred/munge",
            f"StateSaveLocation={d / 'state'}",
            f"SlurmdSpoolDir={d / 'spool'}",
            f"SlurmctldPidFile={d / 'slurmctld.pid'}",
            f"SlurmdPidFile={d / 'slurmd.pid'}",
            f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={d / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SchedulerType=sched/backfill",
            "SchedulerTimeSlice=5",
            "SchedulerParameters=bf_interval=1,sched_interval=1",
            "MpiDefault=none",
            "ReturnToService=2",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MinJobAge=600",
            "KillWait=5",
            "OverTimeLimit=1",  # a minute past the limit: slack for a checkpoint on a busy machine
            f"DefMemPerCPU={mem // self.cpus}",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem} State=UNKNOWN",
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))
        self.env = {**os.environ, "SLURM_CONF": str(conf)}
        log = d / "log"
        try:
            self._spawn("munged", ["munged", "-F", "--force", f"--key-file={key}", f"--socket={d / 'munge.sock'}",
                                   f"--pid-file={d / 'munged.pid'}", f"--log-file={log / 'munged.log'}",
                                   f"--seed-file={d / 'munged.seed'}"])
            self._wait(lambda: (d / "munge.sock").exists(), "munged to create its socket")
            self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(conf)])
            self._spawn("slurmd", ["slurmd", "-D", "-f", str(conf), "-N", "localhost"])
            self._wait(self._node_idle, "the node to be idle in sinfo")
        except SlurmUnavailable:
            self.stop()
            raise

    def _spawn(self, name: str, cmd: list[str]) -> None:
        out = open(self.dir / "log" / f"{name}.out", "wb")
        self.procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
        out.close()

    def _wait(self, ready, what: str) -> None:
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise SlurmUnavailable(f"{', '.join(dead)} exited while waiting for {what}:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.2)
        raise SlurmUnavailable(f"timed out after {self.timeout:.0f} s waiting for {what}:\n{self.logs()}")

    def _node_idle(self) -> bool:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=self.env, timeout=20)
        return proc.returncode == 0 and proc.stdout.strip() == "idle"

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged by their PIDs."""
        try:
            if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
                subprocess.run(["scancel", "--full", "--user", pwd.getpwuid(os.getuid()).pw_name], env=self.env,
                               capture_output=True, timeout=30)
                deadline = time.time() + 15
                while time.time() < deadline and self.jobs():
                    time.sleep(0.5)
        except (KeyboardInterrupt, subprocess.TimeoutExpired):
            pass  # the daemons go below in any case
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
        if self.dir is not None and not os.environ.get("KEEP_SLURM_DIR"):
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- queries --------------------------------------------------------------------------------

    def run(self, *cmd: str, check: bool = True) -> str:
        """A Slurm client command against this cluster; its stdout."""
        proc = subprocess.run(list(cmd), capture_output=True, text=True, env=self.env, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def jobs(self) -> dict[str, str]:
        """Job ID -> state of the jobs in the queue."""
        out = self.run("squeue", "-h", "-o", "%i %T", check=False)
        return dict(line.split(None, 1) for line in out.splitlines() if line.strip())

    def job_info(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as key -> value (finished jobs too, for MinJobAge)."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        return dict(tok.split("=", 1) for tok in out.split() if "=" in tok)

    def logs(self) -> str:
        """The last lines of every daemon log, for error messages."""
        parts = []
        for p in sorted((self.dir / "log").glob("*")) if self.dir else []:
            lines = p.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {p.name}\n" + "\n".join(lines))
        return "\n".join(parts)
