"""The Slurm executor: each study stage one Slurm job, submitted through submitit.

The runner (pipelines/stages.py) decides what runs and when, as with the local executor; this
module submits a stage once its inputs are done, polls `squeue`, and reports the exit status.
Run directories, logs and submitit's job files live on the filesystem the login node and the
compute nodes share; a cluster without shared storage is not supported.

What a job runs (`StageJob`, unpickled by `python -m submitit.core._submit` on the node): the
stage's command as a subprocess in its own session, output appended to STUDY/logs/<stage>.log.
DDPM training and sampling run `accelerate launch` with one process per GPU of the job; with
`nodes > 1` submitit starts one task per node (`srun --ntasks-per-node=1`) and each task runs
one launcher with `--num_machines N --machine_rank $SLURM_NODEID --main_process_ip <first host
of scontrol show hostnames $SLURM_JOB_NODELIST> --main_process_port <slurm.port + job ID % 1000>`.

Time limits and preemption: every job is submitted with `--signal=USR2@<slurm.signal_s>`. On
USR2 (the time limit is near, or `scancel --signal=USR2` / a preemption notice) the job sends
SIGTERM to its command's process group: gen/train.py finishes its step, writes a checkpoint
through the atomic path and exits; gen/sample.py keeps its finished shards. submitit then calls
`StageJob.checkpoint`, which requeues the same job (same ID: the study keeps waiting for it),
and the next start continues with the stage's resume flags (`--resume latest`). A job's children
ignore USR2 so that only this module decides what it means.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import getpass
import os
import pickle
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from echosynth.gen.core.config import ConfigError
from echosynth.gen.core.io import read_json
from echosynth.pipelines.config import SLURM_KINDS, SlurmConfig, SlurmJobConfig
from echosynth.pipelines.executor import REPO, ExecutorError, Job

ACCELERATE = "accelerate.commands.launch"
KIND_BY_SCRIPT = {"gen/train.py": "ddpm_train", "gen/sample.py": "sample", "gen/prepare.py": "data",
                  "classify/": "classify", "evaluate/": "evaluate", "reports/": "report"}
REQUEUES = ("ddpm_train", "sample")  # kinds that checkpoint and requeue at the time limit
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
          "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}
REQUEUE_GRACE_S = 15.0  # an ended state is final only once the job stayed out of squeue this long
# Pending reasons that waiting cannot fix: the request exceeds what the partition, its nodes, the
# account or the QOS allow. ReqNodeNotAvail is one only when no node of the cluster could run the job
# (otherwise a node is down or reserved and may come back). Resources, Priority, BeginTime, Dependency
# and the per-user QOS/association limits resolve by waiting.
NEVER_RUNS = ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints", "InvalidAccount",
              "InvalidQOS", "AccountNotAllowed", "QOSNotAllowed", "PartitionDown", "PartitionInactive",
              "QOSMaxWallDurationPerJobLimit", "QOSMaxCpuPerJobLimit", "QOSMaxNodePerJobLimit",
              "QOSMaxGRESPerJob", "QOSMaxMemoryPerJob", "QOSMinCpuNotSatisfied", "QOSMinGRES",
              "AssocMaxWallDurationPerJobLimit", "AssocMaxCpuPerJobLimit", "AssocMaxNodePerJobLimit",
              "AssocMaxGRESPerJob", "AssocMaxMemPerJob", "DependencyNeverSatisfied")

WHY = {"CANCELLED": "was cancelled (scancel or an administrator)", "TIMEOUT": "reached its time limit",
       "FAILED": "failed", "NODE_FAIL": "lost its node", "OUT_OF_MEMORY": "ran out of memory",
       "PREEMPTED": "was preempted", "BOOT_FAIL": "could not boot its node", "DEADLINE": "passed its deadline"}
_PR_SET_CHILD_SUBREAPER = 36


def stage_kind(stage: Any) -> str:
    """The resource kind of a stage (a key of the `slurm:` section), from the script it runs."""
    for arg in map(str, stage.command):
        rel = arg[len(str(REPO)) + 1:] if arg.startswith(str(REPO) + os.sep) else arg
        for prefix, kind in KIND_BY_SCRIPT.items():
            if rel == prefix or (prefix.endswith("/") and rel.startswith(prefix) and rel.endswith(".py")):
                return kind
    raise ValueError(f"stage {stage.name}: no Slurm resource kind for its command {stage.shell()}")


def check_config(cfg: SlurmConfig) -> None:
    """Refuse settings Slurm or the stages cannot honour, naming the key."""
    for kind in SLURM_KINDS:
        job: SlurmJobConfig = getattr(cfg, kind)
        if job.nodes > 1 and kind not in REQUEUES:
            raise ConfigError(f"slurm.{kind}.nodes: {job.nodes}; only ddpm_train and sample run on several nodes")
        # slurmctld looks at time limits every 30 s and signals at the first look within
        # signal_s + 30 s of the limit: leave the job 20 s to start before that can happen.
        if kind in REQUEUES and cfg.signal_s + 50 > job.time * 60:
            raise ConfigError(f"slurm.signal_s {cfg.signal_s} s leaves too little of slurm.{kind}.time "
                              f"({job.time} min): Slurm may signal up to signal_s + 30 s before the limit; "
                              f"lower slurm.signal_s to {max(10, job.time * 60 - 50)} or raise the time")
        for flag in job.extra:
            if not flag.startswith("--") or len(flag) < 3:
                raise ConfigError(f"slurm.{kind}.extra: {flag!r} is not a long sbatch flag (--name or --name=value)")


def sbatch_parameters(job: SlurmJobConfig, name: str, cfg: SlurmConfig, comment: str) -> dict[str, Any]:
    """submitit SlurmExecutor parameters for one stage."""
    p: dict[str, Any] = {"job_name": name, "time": job.time, "nodes": job.nodes, "ntasks_per_node": 1,
                         "cpus_per_task": job.cpus, "signal_delay_s": cfg.signal_s, "comment": comment,
                         "stderr_to_stdout": True}
    for key in ("partition", "account", "qos", "constraint", "mem"):
        if getattr(job, key):
            p[key] = getattr(job, key)
    if job.gpus:
        p["gpus_per_node"] = job.gpus
    if cfg.setup:
        p["setup"] = list(cfg.setup)
    extra = {}
    for flag in job.extra:
        k, _, v = flag[2:].partition("=")
        extra[k] = v if v else True
    if extra:
        p["additional_parameters"] = extra
    return p


def sbatch_lines(params: dict[str, Any], folder: Path) -> list[str]:
    """The #SBATCH lines submitit writes for these parameters."""
    from submitit.slurm.slurm import _make_sbatch_string

    text = _make_sbatch_string(command="…", folder=folder, **params)
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


# ----------------------------------------------------------------------------------------------
# The job, on the compute node


def _ignore_usr2() -> None:
    """In the stage's children: USR2 is the job wrapper's signal (Slurm sends it to every process)."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def _become_subreaper() -> None:
    """Orphaned grandchildren (workers whose launcher exited on SIGTERM) become our children, so
    the job can wait until every process of the stage is gone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def first_host() -> str:
    """The job's first node: `scontrol show hostnames $SLURM_JOB_NODELIST | head -1`."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST", "")
    if nodelist and shutil.which("scontrol"):
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=60)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    from submitit.slurm.slurm import SlurmJobEnvironment

    return SlurmJobEnvironment().hostnames[0]


def launch_command(cmd: list[str], gpus: int, nodes: int, port: int) -> list[str]:
    """Rewrite an `accelerate launch` command for this job: one process per GPU of the job, and on
    several nodes accelerate's multi-node arguments from the Slurm environment."""
    if ACCELERATE not in cmd:
        return cmd
    i = cmd.index(ACCELERATE)
    j = next(k for k in range(i + 1, len(cmd)) if cmd[k].endswith(".py"))
    opts, keep, k = cmd[i + 1:j], [], 0
    per_node = 1
    while k < len(opts):  # drop the machine/process options; keep precision, dynamo, ...
        if opts[k] in ("--num_machines", "--num_processes", "--machine_rank", "--main_process_ip",
                       "--main_process_port"):
            if opts[k] == "--num_processes":
                per_node = int(opts[k + 1])
            k += 2
        elif opts[k] == "--multi_gpu":
            k += 1
        else:
            keep.append(opts[k])
            k += 1
    per_node = gpus or per_node
    total = per_node * nodes
    launch = ["--num_machines", str(nodes), "--num_processes", str(total)]
    if total > 1:
        launch.append("--multi_gpu")
    if nodes > 1:
        job_id = int(os.environ.get("SLURM_JOB_ID", "0") or 0)
        launch += ["--machine_rank", os.environ.get("SLURM_NODEID", "0"), "--main_process_ip", first_host(),
                   "--main_process_port", str(port + job_id % 1000)]
    return cmd[:i + 1] + launch + keep + cmd[j:]


class StageJob:
    """One stage as a submitit job: run its command; on USR2 checkpoint it and requeue.

    Picklable by reference (this module is importable on the nodes); the running process is not
    part of the pickled state."""

    def __init__(self, name: str, command: list[str], first: list[str], env: dict[str, str], log: str,
                 run_dir: str, resume_args: list[str] | None, kind: str, gpus: int, nodes: int, port: int,
                 grace_s: float):
        self.name, self.command, self.first, self.env, self.log = name, command, first, env, log
        self.run_dir, self.resume_args, self.kind = run_dir, resume_args, kind
        self.gpus, self.nodes, self.port, self.grace_s = gpus, nodes, port, grace_s
        self.attempt = 0  # requeues through checkpoint()
        self._pgid: int | None = None
        self._signalled = False

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_pgid", "_signalled")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _pgid=None, _signalled=False)

    def _note(self, msg: str) -> None:
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(f"slurm: {msg}\n")

    def _command(self) -> list[str]:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if self.attempt == 0 and restarts == 0:
            cmd = list(self.first)
        else:  # requeued (by us at the time limit, or by Slurm after a preemption or node failure)
            run = Path(self.run_dir)
            started = run.exists() and any(run.iterdir())
            if started and self.resume_args is None:
                shutil.rmtree(run)  # cannot resume: start over
                started = False
            cmd = list(self.command) + (list(self.resume_args or []) if started else [])
            if os.environ.get("SLURM_PROCID", "0") == "0":
                self._note(f"job {os.environ.get('SLURM_JOB_ID', '?')} restarted (start {max(self.attempt, restarts) + 1})"
                           + (f": {' '.join(self.resume_args or []) or 'same command'}" if started else ": from scratch"))
                with open(self.log, "a", encoding="utf-8") as f:
                    f.write(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}\n")
        if self.kind in REQUEUES:
            cmd = launch_command(cmd, self.gpus, self.nodes, self.port)
        return cmd

    def __call__(self) -> int:
        _become_subreaper()
        cmd = self._command()
        prev = signal.getsignal(signal.SIGUSR2)  # submitit's: checkpoint() then requeue

        def on_usr2(signum, frame):
            if self._signalled:
                return  # Slurm's signal reaches us through srun too: act on it once
            self._stop_child()  # every node's command checkpoints; rank 0's submitit handler requeues
            if callable(prev):
                prev(signum, frame)

        signal.signal(signal.SIGUSR2, on_usr2)
        env = {**os.environ, **self.env}
        with open(self.log, "a", encoding="utf-8") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    cwd=str(REPO), start_new_session=True, preexec_fn=_ignore_usr2)
        self._pgid = proc.pid
        rc = self._wait_all(proc.pid)
        self._pgid = None
        return rc

    def _wait_all(self, pid: int, deadline: float | None = None) -> int:
        """Reap children until none is left (the command's launcher, then any orphaned workers);
        the command's exit status (negative: killed by that signal). Polls, since a blocking wait
        inside a signal handler would deadlock."""
        rc: int | None = None
        while True:
            try:
                got, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return rc if rc is not None else 0
            if got == 0:
                if deadline is not None and time.monotonic() > deadline:
                    return rc if rc is not None else -signal.SIGKILL
                time.sleep(0.1)
                continue
            if got == pid:
                rc = os.waitstatus_to_exitcode(status)

    def _stop_child(self) -> None:
        """SIGTERM to the command's process group, once (a second one would cut torchrun's shutdown short)."""
        if self._pgid is not None and not self._signalled:
            self._signalled = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._pgid, signal.SIGTERM)

    def checkpoint(self) -> Any:
        """submitit's hook on USR2 (rank 0): wait for the command to checkpoint and exit, then
        return the resubmission (same job ID, requeued); None for stages that cannot resume."""
        import submitit

        if self.kind not in REQUEUES or self._pgid is None:
            return None
        pgid = self._pgid
        self._stop_child()  # a no-op when the USR2 handler already did it
        rc = self._wait_all(pgid, time.monotonic() + self.grace_s)
        if rc == -signal.SIGKILL:  # did not stop in time: no partial state may stay behind
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        self._note(f"job {os.environ.get('SLURM_JOB_ID', '?')} signalled (time limit or preemption): "
                   f"command stopped (exit {rc}), requeued to continue")
        self.attempt += 1
        self._pgid, self._signalled = None, False
        return submitit.helpers.DelayedSubmission(self)


# ----------------------------------------------------------------------------------------------
# The executor, on the login node


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def queue_states() -> dict[str, tuple[str, str]]:
    """Job ID -> (state, reason) of this user's jobs in the queue."""
    out = _run(["squeue", "-h", "-u", getpass.getuser(), "-o", "%i|%T|%r"])
    if out.returncode != 0:
        raise RuntimeError(f"squeue failed: {out.stderr.strip()}")
    states = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1], parts[2])
    return states


def final_state(job_id: str) -> str:
    """The state of a job that left the queue: sacct where accounting runs, else scontrol
    (which knows jobs for MinJobAge after they end); UNKNOWN when neither does."""
    out = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", job_id]) if shutil.which("sacct") else None
    if out is not None and out.returncode == 0:
        for line in out.stdout.splitlines():
            jid, _, state = line.partition("|")
            if jid.strip() == job_id and state.strip():
                return state.split()[0]  # "CANCELLED by 0" -> CANCELLED
    out = _run(["scontrol", "show", "job", "-o", job_id])
    if out.returncode == 0:
        for tok in out.stdout.split():
            if tok.startswith("JobState="):
                return tok.split("=", 1)[1]
    return "UNKNOWN"


# ----------------------------------------------------------------------------------------------
# What the cluster has: a request that no node can satisfy is an error before anything is submitted


@dataclasses.dataclass
class Node:
    """One node as `sinfo` reports it."""

    name: str
    cpus: int
    mem_mb: int
    gpus: int
    partitions: set[str]
    features: set[str]


@dataclasses.dataclass
class Cluster:
    """The nodes, the partitions' time limits (minutes, None = unlimited) and the default partition."""

    nodes: list[Node]
    time_limits: dict[str, int | None]
    default_partition: str

    def largest(self, partition: str = "") -> str:
        """The largest node (of `partition`, if given): CPUs, memory, GPUs."""
        nodes = [n for n in self.nodes if not partition or partition in n.partitions] or self.nodes
        if not nodes:
            return "no nodes"
        cpus, mem, gpus = max(n.cpus for n in nodes), max(n.mem_mb for n in nodes), max(n.gpus for n in nodes)
        return f"{cpus} CPU(s), {_mem_text(mem)} memory, {gpus} GPU(s)" + (f" (partition {partition})" if partition else "")


def _mem_text(mb: int) -> str:
    """Megabytes as a --mem value (whole units: sbatch takes no fractions)."""
    return f"{mb // 1024}G" if mb % 1024 == 0 else f"{mb}M"


def mem_mb(text: str) -> int | None:
    """--mem as megabytes (Slurm's units: K, M, G, T; a bare number is M); None for empty."""
    text = text.strip().upper()
    if not text:
        return None
    scale = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2}
    unit = text[-1] if text[-1] in scale else "M"
    num = text[:-1] if text[-1] in scale else text
    try:
        return int(float(num) * scale[unit])
    except ValueError:
        raise ConfigError(f"--mem {text!r} is not a memory size (e.g. 4G, 4000M)") from None


def _gpus(gres: str) -> int:
    """GPUs in a node's GRES (`gpu:4`, `gpu:a100:4(S:0-1)`, `(null)`)."""
    total = 0
    for item in gres.split(","):
        if item.startswith("gpu:"):
            count = item.split("(")[0].rsplit(":", 1)[-1]
            total += int(count) if count.isdigit() else 0
    return total


def _minutes(limit: str) -> int | None:
    """A Slurm time limit ([D-]HH:MM:SS, MM:SS, infinite) as minutes; None when unlimited."""
    limit = limit.strip()
    if limit.lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    days, _, rest = limit.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0) if len(parts) == 2 else parts.append(0)
    h, m, sec = parts
    return int(days or 0) * 1440 + h * 60 + m + (1 if sec else 0)


def cluster_info() -> Cluster:
    """The cluster's nodes and partitions from `sinfo` (RuntimeError when sinfo cannot answer)."""
    if not shutil.which("sinfo"):
        raise RuntimeError("sinfo not found")
    out = _run(["sinfo", "-h", "-N", "-o", "%N|%c|%m|%G|%P|%f"])
    if out.returncode != 0:
        said = (out.stderr.strip() or out.stdout.strip() or f"exit {out.returncode}").splitlines()
        raise RuntimeError(f"sinfo failed: {said[-1]}")
    nodes: dict[str, Node] = {}
    default = ""
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 6:
            continue
        name, cpus, mem, gres, part, feats = parts
        if part.endswith("*"):
            part = default = part[:-1]
        node = nodes.setdefault(name, Node(name, int(cpus.rstrip("+") or 0), int(mem.rstrip("+") or 0), _gpus(gres),
                                           set(), {f for f in feats.split(",") if f and f != "(null)"}))
        node.partitions.add(part)
    out = _run(["sinfo", "-h", "-o", "%P|%l"])
    limits = {}
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        part, _, limit = line.strip().partition("|")
        limits[part.rstrip("*")] = _minutes(limit)
    return Cluster(list(nodes.values()), limits, default)


def request_problem(job: SlurmJobConfig, kind: str, cluster: Cluster) -> str | None:
    """Why no node (or not enough nodes) of the cluster can run a job of this request; None if some can."""
    part = job.partition or cluster.default_partition
    key = f"slurm.{kind}"
    if part and cluster.time_limits and part not in cluster.time_limits:
        return (f"partition {part!r} does not exist (partitions: {', '.join(sorted(cluster.time_limits))}); "
                f"change {key}.partition")
    nodes = [n for n in cluster.nodes if not part or part in n.partitions]
    mem = mem_mb(job.mem)
    want = [c.strip() for c in job.constraint.split("&")] if job.constraint and not any(
        ch in job.constraint for ch in "|[]*") else []
    fits = [n for n in nodes if n.cpus >= job.cpus and (mem is None or n.mem_mb >= mem) and n.gpus >= job.gpus
            and all(f in n.features for f in want)]
    problems = []
    if len(fits) < job.nodes:
        big = lambda attr: max((getattr(n, attr) for n in nodes), default=0)  # noqa: E731
        if job.cpus > big("cpus"):
            problems.append(f"lower {key}.cpus to at most {big('cpus')}")
        if mem is not None and mem > big("mem_mb"):
            problems.append(f"lower {key}.mem to at most {_mem_text(big('mem_mb'))}")
        if job.gpus > big("gpus"):
            problems.append(f"lower {key}.gpus to at most {big('gpus')}" + (" (this partition has no GPUs)" if not big("gpus") else ""))
        if want and not any(all(f in n.features for f in want) for n in nodes):
            problems.append(f"change {key}.constraint (no node has {job.constraint!r})")
        if not problems:
            problems.append(f"lower {key}.nodes to at most {len(fits)}" if job.nodes > 1 else
                            f"no single node has all of it; lower {key}.cpus, .mem or .gpus")
    limit = cluster.time_limits.get(part) if part else None
    if limit is not None and job.time > limit:
        problems.append(f"lower {key}.time to at most {limit} min (partition {part}'s limit)")
    return "; ".join(problems) or None


def describe_request(job: SlurmJobConfig) -> str:
    """A job's request in words: nodes, CPUs, memory, GPUs, time, partition."""
    return (f"{job.nodes} node(s) × {job.cpus} CPU(s), {job.mem or 'default'} memory, {job.gpus} GPU(s), "
            f"{job.time} min" + (f", partition {job.partition}" if job.partition else "")
            + (f", constraint {job.constraint}" if job.constraint else ""))


def unrunnable(stages: list[Any], names: list[str], cfg: SlurmConfig, cluster: Cluster) -> list[str]:
    """One line per resource kind that the selected stages need and no node can satisfy."""
    by_kind: dict[str, list[str]] = {}
    wanted = set(names)
    for s in stages:
        if s.name in wanted:
            by_kind.setdefault(stage_kind(s), []).append(s.name)
    lines = []
    for kind, stage_names in by_kind.items():
        job: SlurmJobConfig = getattr(cfg, kind)
        why = request_problem(job, kind, cluster)
        if why:
            shown = ", ".join(stage_names[:3]) + (f" and {len(stage_names) - 3} more" if len(stage_names) > 3 else "")
            lines.append(f"stage(s) {shown}: slurm.{kind} asks {describe_request(job)}; the largest node has "
                         f"{cluster.largest(job.partition or cluster.default_partition)}: {why}")
    return lines


class SlurmExecutor:
    """Submit stages as Slurm jobs (see the module docstring); the runner's executor interface."""

    def __init__(self, study_dir: Path, cfg: SlurmConfig, cancel_on_exit: bool = False,
                 echo=print, ask=None):
        import submitit  # noqa: F401  (fail here, not at the first stage, when it is missing)

        check_config(cfg)
        if not shutil.which("sbatch") or not shutil.which("squeue"):
            raise RuntimeError("--executor slurm: sbatch/squeue not found; run the study on a Slurm login node")
        self.study_dir = Path(study_dir).resolve()
        self.cfg = cfg
        self.folder = Path(cfg.folder).resolve() if cfg.folder else self.study_dir / "slurm"
        self.slots, self.poll_s = cfg.max_jobs, cfg.poll_s
        self.cancel_on_exit, self.echo = cancel_on_exit, echo
        self.ask = ask if ask is not None else _ask_tty
        self.detached: list[Job] = []  # left running at exit: the next run reattaches to them
        self._queue: dict[str, tuple[str, str]] = {}
        self._queue_t = -1e9
        self._gone: dict[str, float] = {}  # job ID -> when it was first seen out of the queue
        self._logs: dict[str, Path] = {}  # stage -> its log
        self._cluster_info: Cluster | None = None  # sinfo's view, read once when a job pends for a fatal reason

    # -- submitting -----------------------------------------------------------------------------

    def params(self, stage: Any) -> dict[str, Any]:
        kind = stage_kind(stage)
        return sbatch_parameters(getattr(self.cfg, kind), stage.name, self.cfg, f"echosynth study {self.study_dir}")

    def _info(self, job_id: str, kind: str) -> dict[str, Any]:
        return {"executor": "slurm", "kind": kind, "job_id": job_id, "slurm_state": "PENDING",
                "slurm_log": str(self.folder / f"{job_id}_0_log.out"),
                "submission": str(self.folder / f"{job_id}_submission.sh")}

    def submit(self, stage: Any, cmd: list[str], env: dict[str, str], log_path: Path) -> Job:
        """Submit the stage as one job; a refused submission is a job that failed at once."""
        import submitit

        kind = stage_kind(stage)
        job_cfg: SlurmJobConfig = getattr(self.cfg, kind)
        self._logs[stage.name] = Path(log_path)
        # The node has its own environment (CUDA_VISIBLE_DEVICES, SLURM_*): pass only what the study sets.
        overrides = {**{k: v for k, v in env.items() if os.environ.get(k) != v}, **stage.env, "PYTHONUNBUFFERED": "1"}
        fn = StageJob(stage.name, [str(c) for c in stage.command], cmd, overrides, str(Path(log_path).resolve()),
                      str(Path(stage.run_dir).resolve()), stage.resume_args, kind, job_cfg.gpus, job_cfg.nodes,
                      self.cfg.port, grace_s=max(10.0, self.cfg.signal_s - 15.0))
        self.folder.mkdir(parents=True, exist_ok=True)
        ex = submitit.SlurmExecutor(folder=self.folder, max_num_timeout=self.cfg.max_requeue)
        try:
            ex.update_parameters(**self.params(stage))
            sj = ex.submit(fn)
        except Exception as e:  # sbatch refused (bad partition, account, limits): fail this stage only
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(f"slurm: sbatch refused the job: {str(e).strip()}\n")
            return Job(stage=stage.name, job_id="", handle=None, info={"executor": "slurm", "kind": kind,
                                                                        "slurm_state": "NOT_SUBMITTED"})
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"slurm: submitted job {sj.job_id} ({kind}: {self._summary(job_cfg)})\n")
        self._queue_t = -1e9  # the next poll sees the new job
        return Job(stage=stage.name, job_id=str(sj.job_id), handle=sj, info=self._info(str(sj.job_id), kind))

    @staticmethod
    def _summary(j: SlurmJobConfig) -> str:
        return (f"{j.nodes} node(s) x {j.cpus} CPU(s), {j.gpus} GPU(s)/node, {j.mem or 'default'} memory, "
                f"{j.time} min")

    def reattach(self, stage: Any, job_id: str, log_path: Path) -> Job | None:
        """The job of an earlier run of the study, if Slurm still has it queued or running, or it
        ended while no study watched it; None when it is unknown (submit again)."""
        import submitit

        if not job_id or not job_id.isdigit():
            return None
        self._refresh(force=True)
        in_queue = job_id in self._queue
        sj = submitit.SlurmJob(folder=self.folder, job_id=job_id)
        if not in_queue and not sj.paths.result_pickle.exists():
            return None
        kind = stage_kind(stage)
        self._logs[stage.name] = Path(log_path)
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"slurm: study re-run: reattached to job {job_id}\n")
        job = Job(stage=stage.name, job_id=job_id, handle=sj, info=self._info(job_id, kind))
        if in_queue:
            job.info["slurm_state"] = self._queue[job_id][0]
        return job

    # -- watching -------------------------------------------------------------------------------

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._queue_t >= self.poll_s * 0.9:
            try:
                self._queue = queue_states()
                self._queue_t = now
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                self.echo(f"study.py: warning: {e}; retrying")  # a busy controller: keep the old view

    def poll(self, job: Job) -> int | None:
        """None while the job is queued or running (requeued included); then the command's exit
        status, or a failure when Slurm ended the job (cancelled, time limit, node failure)."""
        if job.handle is None:
            return 1  # sbatch refused it; the reason is in the log
        self._refresh()
        jid = job.job_id
        if jid in self._queue:
            self._gone.pop(jid, None)
            state, reason = self._queue[jid]
            if state == "PENDING":
                self._check_pending(job, reason)
            if state != job.info.get("slurm_state"):
                job.info["slurm_state"] = state
                if state == "RUNNING" and not job.info.get("ran"):
                    job.info["ran"] = True
                    if job.info.get("requeues"):
                        self.echo(f"[{job.stage}] job {jid} running again")
                elif state in ("PENDING", "REQUEUED", "REQUEUE_HOLD") and job.info.get("ran"):
                    job.info.update(ran=False, requeues=job.info.get("requeues", 0) + 1)
                    self.echo(f"[{job.stage}] job {jid} requeued ({reason}): it continues from its checkpoint")
            return None
        result = job.handle.paths.result_pickle
        first_gone = self._gone.setdefault(jid, time.monotonic())
        state = final_state(jid)
        if state in ACTIVE:  # between squeue's view and scontrol's: look again next time
            return None
        if state not in ("COMPLETED", "UNKNOWN") and time.monotonic() - first_gone < REQUEUE_GRACE_S:
            return None  # a job requeueing itself can leave squeue for a moment with a transient end state
        if state in ("COMPLETED", "UNKNOWN") and not result.exists():
            # The result may lag on a shared filesystem; give it a minute before calling it lost.
            if time.monotonic() - first_gone < 60:
                return None
        job.info["slurm_state"] = state
        rc = self._result(job, result)
        if state != "COMPLETED" and state != "UNKNOWN":
            why = WHY.get(state, f"ended {state}")
            self._note(job, f"job {jid} {why}")
            self.echo(f"[{job.stage}] Slurm job {jid} {why}")
            return rc if rc not in (None, 0) else -signal.SIGTERM
        if rc is None:
            self._note(job, f"job {jid} left the queue without a result (Slurm state {state}); see {job.info.get('slurm_log')}")
            return 1
        return rc

    def _cluster(self) -> Cluster | None:
        if self._cluster_info is None:
            try:
                self._cluster_info = cluster_info()
            except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError):
                return None
        return self._cluster_info

    def _check_pending(self, job: Job, reason: str) -> None:
        """Stop the study (ExecutorError) when the job pends for a reason that waiting cannot fix:
        cancel it, and say what it asked, what the cluster has and which `slurm:` key to change."""
        code = reason.split(",")[0].split()[0] if reason.strip() else ""
        if code not in NEVER_RUNS and code != "ReqNodeNotAvail":
            return
        kind = job.info.get("kind", "")
        spec: SlurmJobConfig = getattr(self.cfg, kind)
        cluster = self._cluster()
        why = request_problem(spec, kind, cluster) if cluster else None
        if code == "ReqNodeNotAvail" and (cluster is None or why is None):
            return  # some node could run it once it is back: keep waiting
        _run(["scancel", job.job_id])
        largest = cluster.largest(spec.partition or cluster.default_partition) if cluster else "unknown (sinfo failed)"
        msg = (f"stage {job.stage}: Slurm job {job.job_id} cannot start ({reason}): slurm.{kind} asks "
               f"{describe_request(spec)}; the largest node has {largest}"
               + (f": {why}" if why else f"; change slurm.{kind} (partition, account, qos, time, cpus, mem or gpus)")
               + ". The job was cancelled.")
        self._note(job, msg)
        raise ExecutorError(msg, stage=job.stage)

    def _result(self, job: Job, path: Path) -> int | None:
        """The command's exit status from submitit's result file; None when there is none."""
        try:
            with open(path, "rb") as f:
                outcome, value = pickle.load(f)
        except (OSError, EOFError, pickle.UnpicklingError, ValueError):
            return None
        if outcome == "success":
            return int(value)
        self._note(job, f"job {job.job_id}: the job wrapper failed:\n{value}")
        return 1

    def _note(self, job: Job, msg: str) -> None:
        path = self._logs.get(job.stage, self.study_dir / "logs" / f"{job.stage}.log")
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"slurm: {msg}\n")

    # -- stopping -------------------------------------------------------------------------------

    def cancel(self, jobs: list[Job]) -> None:
        """On Ctrl-C or kill: cancel the jobs with --cancel-on-exit or when the user says so at the
        prompt; otherwise leave them queued or running for the next run to reattach."""
        jobs = [j for j in jobs if j.job_id]
        if not jobs:
            return
        ids = " ".join(j.job_id for j in jobs)
        if self.cancel_on_exit or self.ask(f"cancel the {len(jobs)} submitted Slurm job(s) ({ids})? [y/N] "):
            _run(["scancel", *[j.job_id for j in jobs]])
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                self._refresh(force=True)
                if not any(j.job_id in self._queue for j in jobs):
                    break
                time.sleep(1)
            self.echo(f"cancelled Slurm job(s) {ids}")
            return
        self.detached = list(jobs)
        self.echo(f"left Slurm job(s) {ids} queued or running: re-run the same command to wait for them again "
                  f"(it reattaches), or `scancel {ids}` to stop them")

    def close(self) -> None:
        """Jobs outlive the study process by design (see cancel); nothing to stop here."""


def _ask_tty(question: str) -> bool:
    """Ask on the terminal; no terminal (batch, nohup) means no."""
    if not sys.stdin or not sys.stdin.isatty():
        return False
    try:
        return input(question).strip().lower() in ("y", "yes")
    except (EOFError, KeyboardInterrupt):
        return False


# ----------------------------------------------------------------------------------------------
# --dry-run and --status


def dry_run_lines(stages: list[Any], names: list[str], cfg: SlurmConfig, study_dir: Path) -> list[str]:
    """What --executor slurm would submit: each selected stage's kind and #SBATCH lines."""
    folder = Path(cfg.folder).resolve() if cfg.folder else Path(study_dir).resolve() / "slurm"
    out = [f"# slurm: one job per stage, submitted when its deps are done; job files and logs in {folder}"]
    wanted = set(names)
    for s in stages:
        if s.name not in wanted:
            continue
        kind = stage_kind(s)
        params = sbatch_parameters(getattr(cfg, kind), s.name, cfg, f"echosynth study {Path(study_dir).resolve()}")
        out.append(f"[{s.name}] {kind}: " + " ".join(line.removeprefix("#SBATCH ") for line in sbatch_lines(params, folder)))
    return out


def status_table(study_dir: Path) -> str:
    """Each stage of STUDY/study.json with its state, job ID and log; Slurm states live from squeue."""
    path = Path(study_dir) / "study.json"
    if not path.is_file():
        return f"{study_dir}: no study.json yet (the study has not run)"
    stages = (read_json(path) or {}).get("stages", [])
    live: dict[str, tuple[str, str]] = {}
    if any((s.get("executor") or {}).get("executor") == "slurm" for s in stages) and shutil.which("squeue"):
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired, OSError):
            live = queue_states()
    rows = [("stage", "status", "job", "slurm", "seconds", "log")]
    for s in stages:
        info = s.get("executor") or {}
        jid = str(s.get("job_id") or "")
        slurm = ""
        if info.get("executor") == "slurm":
            slurm = live[jid][0] if jid in live else info.get("slurm_state", "")
            if jid in live and live[jid][1] not in ("None", ""):
                slurm += f" ({live[jid][1]})"
        secs = s.get("seconds")
        rows.append((s["name"], s.get("status", "pending"), jid or "-", slurm or "-",
                     f"{secs:.0f}" if isinstance(secs, (int, float)) else "-", s.get("log") or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows)
