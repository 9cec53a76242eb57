"""Where stages run: the executor interface, and the local executor (one process group per stage).

The runner (`pipelines/stages.py`) decides what runs and when; an executor starts and stops
commands. Another executor (pipelines/slurm.py: one Slurm job per stage) plugs in by providing
the same members, and the runner stays as it is:

    slots                                       how many stages may run at once
    poll_s                                      seconds between polls of the running jobs
    submit(stage, cmd, env, log_path) -> Job    start `cmd`; its stdout and stderr go to log_path
    poll(job) -> int | None                     the exit status once finished, else None (cheap)
    cancel(jobs)                                stop them and everything they started; returns
                                                when they are gone
    close()                                     when it returns, nothing this executor started runs

    reattach(stage, job_id, log_path) -> Job | None   optional: find a job an earlier run started

A `Job` carries `stage` (the stage's name), `job_id` (recorded in study.json: a PID here) and
`info` (more facts for study.json).

Local: each stage is a subprocess in its own session, so a terminal's Ctrl-C reaches the runner
only, and the runner stops each stage's whole process group (launcher, workers, pool processes):
SIGINT first (the CLIs checkpoint and exit), SIGTERM after `grace_s`, SIGKILL after as long
again. A runner killed outright (SIGKILL, the OOM killer) cannot stop anyone, so a small guard
process (`python -m echosynth.pipelines.executor`, in a session of its own) watches it through a pipe: the
runner tells it each group it starts and ends, and when the pipe closes because the runner is
gone, the guard stops the groups still listed (SIGTERM, then SIGKILL) and exits. The guard also
holds the study lock's file open (`keep_fds`), so the next `study.py` on that directory waits
until the old stages are gone instead of writing beside them.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parent.parent
GRACE_S = 15.0  # SIGINT -> SIGTERM -> SIGKILL: time for a training CLI to finish its step and checkpoint


class ExecutorError(RuntimeError):
    """The executor cannot run the study as configured (e.g. no Slurm node can satisfy a request):
    the runner stops submitting and the study ends with this one message."""

    def __init__(self, message: str, stage: str = "") -> None:
        super().__init__(message)
        self.stage = stage  # the stage whose job cannot run, if one


@dataclasses.dataclass
class Job:
    """A submitted stage."""

    stage: str
    job_id: str
    handle: Any = None  # executor-specific (a Popen here)
    info: dict = dataclasses.field(default_factory=dict)  # executor facts for study.json (Slurm: state, logs)


class Executor(Protocol):
    """What the runner needs from an executor (see the module docstring)."""

    slots: int
    poll_s: float

    def submit(self, stage: Any, cmd: list[str], env: dict[str, str], log_path: Path) -> Job: ...
    def poll(self, job: Job) -> int | None: ...
    def cancel(self, jobs: list[Job]) -> None: ...
    def close(self) -> None: ...


def default_jobs(threads: int, cores: int | None = None) -> int:
    """Stages at once on this machine: cores // threads per stage (at least 1)."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(threads, 1))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_groups(pgids: list[int], signals: tuple[int, ...], grace_s: float, reap=lambda: None) -> None:
    """Send each signal in turn to every group still alive, waiting up to grace_s after each."""
    alive = list(pgids)
    for sig in signals:
        alive = [g for g in alive if _group_alive(g)]
        if not alive:
            return
        for g in alive:
            _signal_group(g, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            reap()  # a group leader that is our child stays a zombie (and "alive") until waited for
            alive = [g for g in alive if _group_alive(g)]
            if not alive:
                return
            time.sleep(0.05)


class LocalExecutor:
    """Run stages as local subprocesses, `slots` at a time, each in its own process group."""

    def __init__(self, slots: int = 1, keep_fds: tuple[int, ...] = (), grace_s: float = GRACE_S,
                 poll_s: float = 0.1):
        self.slots = max(1, int(slots))
        self.poll_s = poll_s
        self.grace_s = grace_s
        self._running: dict[str, subprocess.Popen] = {}
        # The guard: its stdin is the only pipe to it; when this process dies, it reads EOF.
        self._guard = subprocess.Popen([sys.executable, "-m", "echosynth.pipelines.executor", str(grace_s)], cwd=str(REPO),
                                       stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True,
                                       pass_fds=keep_fds, text=True)

    def _tell(self, line: str) -> None:
        try:
            self._guard.stdin.write(line + "\n")
            self._guard.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the guard is gone: nothing to tell

    def submit(self, stage: Any, cmd: list[str], env: dict[str, str], log_path: Path) -> Job:
        """Start cmd in a new session (its own process group), appending its output to log_path."""
        with open(log_path, "a", encoding="utf-8") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    cwd=str(REPO), start_new_session=True)
        self._tell(f"+{proc.pid}")
        self._running[str(proc.pid)] = proc
        return Job(stage=getattr(stage, "name", str(stage)), job_id=str(proc.pid), handle=proc)

    def poll(self, job: Job) -> int | None:
        """Exit status (negative: killed by that signal) once the stage's command has exited."""
        proc: subprocess.Popen = job.handle
        rc = proc.poll()
        if rc is None:
            return None
        # Leftovers of the group (workers the command did not wait for) would go on writing into
        # the run dir after the stage counts as finished: stop them now.
        stop_groups([proc.pid], (signal.SIGKILL,), 2.0)
        self._tell(f"-{proc.pid}")
        self._running.pop(job.job_id, None)
        return rc

    def _reap(self) -> None:
        for proc in self._running.values():
            proc.poll()

    def cancel(self, jobs: list[Job]) -> None:
        """SIGINT to every job's group, then SIGTERM, then SIGKILL; returns when all are gone.

        A second Ctrl-C while waiting skips straight to SIGKILL."""
        pgids = [int(j.job_id) for j in jobs]
        try:
            stop_groups(pgids, (signal.SIGINT, signal.SIGTERM, signal.SIGKILL), self.grace_s, self._reap)
        except KeyboardInterrupt:
            stop_groups(pgids, (signal.SIGKILL,), 5.0, self._reap)
        for j in jobs:
            j.handle.poll()
            self._tell(f"-{j.job_id}")
            self._running.pop(j.job_id, None)

    def close(self) -> None:
        """Stop whatever still runs, then let the guard exit."""
        if self._running:
            self.cancel([Job(stage="", job_id=k, handle=p) for k, p in list(self._running.items())])
        try:
            self._guard.stdin.close()
        except OSError:
            pass
        try:
            self._guard.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _guard_main(grace_s: float) -> None:
    """The guard process: track '+PGID' / '-PGID' lines on stdin; at EOF, stop the groups left."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the runner's to handle
    groups: set[int] = set()
    for line in sys.stdin:
        line = line.strip()
        if len(line) > 1 and line[1:].isdigit():
            (groups.add if line[0] == "+" else groups.discard)(int(line[1:]))
    # EOF: the runner closed the pipe (normal end: no groups left) or died (stop its stages).
    stop_groups(sorted(groups), (signal.SIGTERM, signal.SIGKILL), grace_s)


if __name__ == "__main__":
    _guard_main(float(sys.argv[1]) if len(sys.argv) > 1 else GRACE_S)
