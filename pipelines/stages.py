"""The study's stage graph and its cached, resumable, concurrent runner.

A stage is one subprocess (a repo CLI, under `accelerate launch` where it is distributed) that
writes one run directory. Stages hand over files: a stage's `inputs` are paths (files or
directories) that earlier stages wrote or the user gave.

A stage's settings are its CLI's config dataclass (`settings`), resolved by the study: the runner
writes them to `config_file` (JSON) as the stage starts, and the command reads them with `--config`.

Caching: a stage's key is SHA-1 of (name, command, resolved settings in canonical form, extra
config, fingerprints of its inputs).
When the command exits 0 the runner writes `<run_dir>/STAGE_DONE.json` last and atomically,
holding the key and fingerprints of the stage's outputs; a later run skips a stage whose
marker holds the same key. Fingerprints of paths produced by a finished stage are taken from
its marker (a Merkle chain), so checkpoints of gigabytes are hashed once, not on every run.

Scheduling: every stage whose dependencies are done is started, up to the executor's `slots`
at a time (pipelines/executor.py: local process groups, or another executor with the same five
members), in graph order. A failing stage stops its dependants; unrelated branches finish, then
`run` raises StageFailed naming every failure with its log tail. Ctrl-C stops every running
stage's process group and marks none of them done.

Resume: an interrupted stage (run dir present, no marker) whose command had already finished
(its `done_flag` is set and its outputs exist) is marked done without running again; one that
had not resumes through its CLI's own resume flag when it has one, otherwise its run dir is
removed and it starts over. A stale stage (marker with another key: config or inputs changed)
is removed and re-run. STUDY/.lock (StudyLock) keeps a second runner off a study directory.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from echosynth.gen.core.config import to_dict
from echosynth.gen.core.io import append_jsonl, fingerprint, read_json, write_json
from echosynth.pipelines.executor import Executor, ExecutorError, Job, LocalExecutor
from echosynth.pipelines.progress import Progress

DONE = "STAGE_DONE.json"
LOG_TAIL_LINES = 40


class StageFailed(RuntimeError):
    """A stage's command exited non-zero; the message holds its log tail."""


class StudyLocked(RuntimeError):
    """Another runner holds the study directory's lock; the message names its PID."""


@dataclasses.dataclass
class Stage:
    """One step of a study: a command writing `run_dir`, reading `inputs`, after `deps`."""

    name: str
    command: list[str]
    run_dir: Path
    inputs: list[Path] = dataclasses.field(default_factory=list)
    outputs: list[Path] = dataclasses.field(default_factory=list)  # checked to exist when done
    deps: list[str] = dataclasses.field(default_factory=list)
    experiment: str = ""  # real, synthetic, mixing, ... (report grouping)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # subset, arch, fraction, ...
    # How to continue an interrupted run: None = not resumable (remove it, start over); a list =
    # keep the run dir and append these args ([] for CLIs that resume by being re-run as they were).
    resume_args: list[str] | None = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)  # extra settings in the key
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    # (JSON file, key) that the CLI sets true as its last act: an interrupted stage whose CLI had
    # finished (killed before the marker was written) is marked done instead of re-run.
    done_flag: tuple[Path, str] | None = None
    # Job slots the stage occupies (a stage on more threads than the others takes more), capped at
    # the executor's slots. A multi-threaded stage beside other stages is slowed far more than its
    # share: every parallel region waits for the thread that lost its core.
    slots: int = 1
    # The CLI's config dataclass, resolved by the study; written to config_file (the command's --config)
    # when the stage starts. `section` names the study section it comes from, for messages.
    settings: Any = None
    config_file: Path | None = None
    section: str = ""

    def shell(self) -> str:
        """The command as one copy-pasteable shell line."""
        return " ".join(shlex.quote(str(c)) for c in self.command)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description for study.json and --dry-run."""
        return {"name": self.name, "experiment": self.experiment, "meta": self.meta,
                "deps": self.deps, "run_dir": str(self.run_dir), "command": self.shell(),
                "inputs": [str(p) for p in self.inputs], "outputs": [str(p) for p in self.outputs]}


def check_graph(stages: list[Stage]) -> None:
    """Names unique, deps refer to earlier stages (the list is the topological order)."""
    seen: set[str] = set()
    for s in stages:
        if s.name in seen:
            raise ValueError(f"stage name {s.name!r} is used twice")
        for d in s.deps:
            if d not in seen:
                raise ValueError(f"stage {s.name!r} depends on {d!r}, which is not an earlier stage")
        seen.add(s.name)


def select(stages: list[Stage], only: list[str] | None = None, start: str | None = None) -> list[str]:
    """Names to run, in graph order: `only` (stage names, experiment names or name prefixes) and/or
    `start` (that stage and everything after it), plus all their ancestors (cached ones are skipped)."""
    names = [s.name for s in stages]

    def match(pattern: str) -> list[str]:
        hits = [s.name for s in stages if s.name == pattern or s.experiment == pattern
                or s.name.startswith(pattern + "-") or s.name.startswith(pattern)]
        if not hits:
            raise ValueError(f"no stage matches {pattern!r}; stages: {', '.join(names)}")
        return hits

    chosen = set(names)
    if only:
        chosen = {n for p in only for n in match(p)}
    if start:
        first = names.index(match(start)[0])
        chosen &= set(names[first:])
    # Add every ancestor: finished ones are skipped by their cache, unfinished ones must run first.
    deps = {s.name: s.deps for s in stages}
    todo = list(chosen)
    while todo:
        for d in deps[todo.pop()]:
            if d not in chosen:
                chosen.add(d)
                todo.append(d)
    return [n for n in names if n in chosen]


# ----------------------------------------------------------------------------------------------
# The study directory's lock


def _pid_alive(pid: int) -> bool:
    """True if `pid` runs (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class StudyLock:
    """An exclusive flock on STUDY/.lock, which holds the runner's PID.

    The local executor's guard shares the lock's open file, so the lock is free only once the
    runner and every stage it started are gone. A lock whose PID no longer runs is therefore
    waited for (up to `wait_s`: the guard is stopping the old stages), one held by a live PID
    is refused at once."""

    def __init__(self, study_dir: Path, wait_s: float = 60.0, echo: Callable[[str], None] = print):
        self.path = Path(study_dir) / ".lock"
        self.wait_s, self.echo = wait_s, echo
        self.fd: int | None = None

    def _holder(self) -> int | None:
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def acquire(self) -> StudyLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pid = self._holder()
                if pid is not None and _pid_alive(pid):
                    os.close(fd)
                    raise StudyLocked(f"{self.path.parent} is in use by another pipelines/study.py (PID {pid}); "
                                      f"wait for it to finish, or stop it with `kill {pid}` (its stages stop with it)") from None
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.wait_s
                    self.echo(f"study.py: waiting for the stages of a stopped run (PID {pid}) to exit")
                if now > deadline:
                    os.close(fd)
                    raise StudyLocked(f"{self.path} is still locked {self.wait_s:.0f} s after its runner (PID {pid}) "
                                      f"exited: a process of its stages holds it; find it with `fuser -v {self.path}` "
                                      "and stop it") from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # the lock goes with the last descriptor of this open file
            self.fd = None

    def __enter__(self) -> StudyLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ----------------------------------------------------------------------------------------------
# Runner

FINAL = ("done", "cached")


class Runner:
    """Run stages with caching, resume and `executor.slots` at a time; keep STUDY/study.json up to date."""

    def __init__(self, study_dir: Path, stages: list[Stage], header: dict[str, Any],
                 echo: Callable[[str], None] = print, executor: Executor | None = None, jobs: int = 1,
                 progress: Progress | None = None):
        check_graph(stages)
        self.study_dir = Path(study_dir)
        self.stages = stages
        self.by_name = {s.name: s for s in stages}
        self.header = header
        self.echo = echo
        self.executor, self.jobs, self.progress = executor, jobs, progress
        self.log_dir = self.study_dir / "logs"
        self._produced_fp: dict[str, str] = {}  # resolved path -> fingerprint from done markers
        self.state = self._load_state()

    # -- state ------------------------------------------------------------------------------

    def _load_state(self) -> dict[str, dict]:
        path = self.study_dir / "study.json"
        old = (read_json(path) or {}).get("stages", []) if path.is_file() else []
        by_name = {s["name"]: s for s in old if "name" in s}
        state = {}
        for s in self.stages:
            prev = by_name.get(s.name, {})
            state[s.name] = {k: prev.get(k) for k in ("status", "seconds", "started", "finished", "runs", "key",
                                                      "job_id", "log", "executor")}
            state[s.name]["status"] = prev.get("status", "pending")
            state[s.name]["runs"] = prev.get("runs", 0)
        return state

    def save(self) -> None:
        """Write study.json: header, then the stage graph with status, timings and run dirs."""
        stages = [{**s.describe(), **self.state[s.name]} for s in self.stages]
        write_json(self.study_dir / "study.json", {**self.header, "updated": _now(), "stages": stages})

    # -- keys -------------------------------------------------------------------------------

    def _fingerprint(self, path: Path) -> str:
        resolved = str(path.resolve())
        if resolved in self._produced_fp:
            return self._produced_fp[resolved]
        for name, fp in self._produced_fp.items():  # a path inside a finished stage's output
            if resolved.startswith(name + os.sep):
                return hashlib.sha1(f"{fp}:{os.path.relpath(resolved, name)}".encode()).hexdigest()
        return fingerprint(path)

    def key(self, stage: Stage) -> str:
        """SHA-1 of the stage name, command, resolved settings, extra config and input fingerprints."""
        missing = [str(p) for p in stage.inputs if not p.exists()]
        if missing:
            raise FileNotFoundError(f"stage {stage.name}: input(s) missing: {', '.join(missing)}")
        payload = {"name": stage.name, "command": [str(c) for c in stage.command], "config": stage.config,
                   "inputs": {str(p): self._fingerprint(p) for p in stage.inputs}}
        if stage.settings is not None:
            payload["settings"] = to_dict(stage.settings)
        return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def _record_outputs(self, stage: Stage, marker: dict) -> None:
        self._produced_fp[str(stage.run_dir.resolve())] = marker["key"]
        for p, fp in marker.get("outputs", {}).items():
            self._produced_fp[p] = fp

    def is_done(self, stage: Stage, key: str) -> bool:
        """True when the stage's marker holds `key` and its declared outputs exist."""
        marker_path = stage.run_dir / DONE
        if not marker_path.is_file():
            return False
        try:
            marker = read_json(marker_path)
        except ValueError:
            return False
        return isinstance(marker, dict) and marker.get("key") == key and all(p.exists() for p in stage.outputs)

    def _register_if_done(self, stage: Stage) -> bool:
        marker_path = stage.run_dir / DONE
        if not marker_path.is_file():
            return False
        try:
            key = self.key(stage)
        except FileNotFoundError:
            return False
        if not self.is_done(stage, key):
            return False
        self._record_outputs(stage, read_json(marker_path))
        if self.state[stage.name]["status"] not in FINAL:
            self.state[stage.name]["status"] = "cached"
        return True

    # -- schedule ---------------------------------------------------------------------------

    def waves(self, names: list[str]) -> list[list[str]]:
        """The selected stages grouped by depth: a wave's stages need only earlier waves."""
        wanted, depth = set(names), {}
        for s in self.stages:
            if s.name in wanted:
                depth[s.name] = 1 + max((depth[d] for d in s.deps if d in depth), default=-1)
        out: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for n, k in depth.items():
            out[k].append(n)
        return out

    def print_schedule(self, names: list[str]) -> None:
        """--dry-run: the waves, each stage with its deps, cache state and command."""
        done = {s.name for s in self.stages if self._register_if_done(s)}
        for i, wave in enumerate(self.waves(names), 1):
            self.echo(f"# wave {i}: {len(wave)} stage(s) that can run at once")
            for n in wave:
                s = self.by_name[n]
                self.echo(f"[{n}] deps={','.join(s.deps) or '-'}{'  (cached)' if n in done else ''}\n  {s.shell()}")

    # -- running ----------------------------------------------------------------------------

    def run(self, names: list[str], dry_run: bool = False) -> int:
        """Run the named stages (skipping cached ones), deps first; return how many ran.

        Raises StageFailed after the unrelated branches have finished when any stage failed."""
        wanted = [s.name for s in self.stages if s.name in set(names)]
        chosen = set(wanted)
        # Finished upstream stages outside the selection: keys chain through their markers.
        finished = {s.name for s in self.stages if s.name not in chosen and self._register_if_done(s)}
        if dry_run:
            self.print_schedule(wanted)
            return 0
        for n in wanted:
            for d in self.by_name[n].deps:
                if d not in chosen and d not in finished:
                    raise StageFailed(f"stage {n} needs {d}, which has not finished; "
                                      f"run without --only/--from, or include {d}")
        own = self.executor is None
        ex = self.executor if self.executor is not None else LocalExecutor(self.jobs)
        try:
            return self._loop(wanted, ex)
        finally:
            if own:
                ex.close()

    def _loop(self, wanted: list[str], ex: Executor) -> int:
        pending = list(wanted)  # graph order: earlier stages start first
        chosen = set(wanted)
        for n in wanted:  # their status is decided in this run
            self.state[n]["status"] = "pending" if self.state[n]["status"] in FINAL else self.state[n]["status"]
        keys: dict[str, str] = {}
        running: dict[str, tuple[Job, float]] = {}
        failed: dict[str, str] = {}  # name -> message with the log tail
        blocked: dict[str, str] = {}  # name -> the failed stage it needed
        ran = 0
        try:
            while pending or running:
                for name in list(pending):
                    stage = self.by_name[name]
                    cause = next((d if d in failed else blocked[d] for d in stage.deps
                                  if d in failed or d in blocked), None)
                    if cause:
                        pending.remove(name)
                        blocked[name] = cause
                        self._end(name, f"[{name}] not run: it needs {cause}, which failed")
                        continue
                    # Selected deps must have finished in this run (study.json may say done about a
                    # stage that is stale now); the others were checked by their markers.
                    if any(d in chosen and self.state[d]["status"] not in FINAL for d in stage.deps):
                        continue  # a dependency is pending or running
                    if name not in keys:
                        try:
                            keys[name] = self.key(stage)
                        except FileNotFoundError as e:
                            pending.remove(name)
                            failed[name] = str(e)
                            self.state[name].update(status="failed", finished=_now())
                            self.save()
                            self._end(name, f"[{name}] failed: {e}")
                            continue
                        if self.is_done(stage, keys[name]):
                            pending.remove(name)
                            self._record_outputs(stage, read_json(stage.run_dir / DONE))
                            self.state[name].update(status="cached", key=keys[name])
                            self.save()
                            self._end(name, f"[{name}] cached")
                            continue
                    if sum(min(self.by_name[r].slots, ex.slots) for r in running) + min(stage.slots, ex.slots) > ex.slots:
                        continue  # a later, smaller ready stage may still fit
                    pending.remove(name)
                    job = self._reattach(ex, stage, keys[name])
                    if job is not None:  # still queued or running from an earlier run: don't submit twice
                        running[name] = (job, time.perf_counter())
                        continue
                    extra = self._prepare_run_dir(stage, keys[name])
                    if extra is None:  # its command had finished before the last run was stopped
                        self._mark_done(stage, keys[name], None)
                        ran += 1
                        continue
                    running[name] = (self._start(ex, stage, keys[name], extra), time.perf_counter())
                progressed = False
                for name, (job, t0) in list(running.items()):
                    rc = ex.poll(job)
                    if rc is None:
                        continue
                    del running[name]
                    progressed = True
                    msg = self._finish(self.by_name[name], keys[name], rc, round(time.perf_counter() - t0, 2))
                    if msg:
                        failed[name] = msg
                    else:
                        ran += 1
                if not progressed and running:
                    if self.progress:
                        self.progress.tick()
                    time.sleep(ex.poll_s)
        except ExecutorError as e:  # nothing more can run as configured: stop here, as on Ctrl-C
            others = [job for name, (job, _) in running.items() if name != e.stage]
            if others:
                ex.cancel(others)
            for name, (_, t0) in running.items():
                self.state[name].update(status="failed" if name == e.stage else "interrupted",
                                        seconds=round(time.perf_counter() - t0, 2))
            self.save()
            raise
        except KeyboardInterrupt:
            if running:
                self.echo(f"stopping {', '.join(running)} ...")
                ex.cancel([job for job, _ in running.values()])
            for name, (_, t0) in running.items():
                self.state[name].update(status="interrupted", seconds=round(time.perf_counter() - t0, 2))
            self.save()
            raise
        if failed:
            head = f"{len(failed)} stage(s) failed: {', '.join(failed)}"
            if blocked:
                head += f"; not run because of them: {', '.join(blocked)}"
            raise StageFailed(head + "\n" + "\n".join(f"- {m}" for m in failed.values()))
        return ran

    def _end(self, name: str, msg: str) -> None:
        self.echo(msg)
        if self.progress:
            self.progress.finished(name)

    def _started_path(self, stage: Stage) -> Path:
        # Beside the run dir, not inside it: some CLIs refuse a run dir that is not empty.
        return stage.run_dir.parent / f".{stage.run_dir.name}.started.json"

    def _complete(self, stage: Stage) -> bool:
        """The CLI's own record says it finished, and every declared output exists."""
        if stage.done_flag is None:
            return False
        path, flag = stage.done_flag
        try:
            info = read_json(path) if Path(path).is_file() else None
        except ValueError:
            return False
        return isinstance(info, dict) and info.get(flag) is True and all(p.exists() for p in stage.outputs)

    def _prepare_run_dir(self, stage: Stage, key: str) -> list[str] | None:
        """Clear a stale or interrupted run dir, or keep it and return the resume flag; None when
        the interrupted run had in fact finished (only its marker is missing)."""
        run = stage.run_dir
        started = self._started_path(stage)
        if (run / DONE).is_file():  # finished with another key: stale
            self.echo(f"[{stage.name}] config or inputs changed: re-running")
            shutil.rmtree(run)
        elif run.exists() and any(run.iterdir()):
            prev = read_json(started) if started.is_file() else None
            same = isinstance(prev, dict) and prev.get("key") == key
            if same and self._complete(stage):
                self.echo(f"[{stage.name}] had finished before the last run stopped: marking it done")
                return None
            if stage.resume_args is not None and same:
                how = " ".join(stage.resume_args) or "re-running the same command"
                self.echo(f"[{stage.name}] resuming an interrupted run ({how})")
                return list(stage.resume_args)
            self.echo(f"[{stage.name}] removing an interrupted run and starting over")
            shutil.rmtree(run)
        return []

    def _reattach(self, ex: Executor, stage: Stage, key: str) -> Job | None:
        """The job an earlier run started for this stage with the same key, where the executor can
        find it again (`reattach`: Slurm); None otherwise."""
        st = self.state[stage.name]
        attach = getattr(ex, "reattach", None)
        if attach is None or not st.get("job_id") or st.get("key") != key or st.get("status") not in ("running", "interrupted"):
            return None
        job = attach(stage, str(st["job_id"]), self.log_dir / f"{stage.name}.log")
        if job is None:
            return None
        st.update(status="running", executor=job.info or None)
        self.save()
        self.echo(f"[{stage.name}] reattached to job {job.job_id}")
        if self.progress:
            self.progress.started(stage.name)
        return job

    def _start(self, ex: Executor, stage: Stage, key: str, extra: list[str]) -> Job:
        stage.run_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{stage.name}.log"
        st = self.state[stage.name]
        st.update(status="running", started=_now(), finished=None, seconds=None, key=key,
                  runs=(st.get("runs") or 0) + 1, log=str(log_path))
        write_json(self._started_path(stage), {"key": key, "started": st["started"]})
        if stage.settings is not None:
            write_json(stage.config_file, to_dict(stage.settings))
        cmd = [str(c) for c in stage.command] + extra
        with open(log_path, "a", encoding="utf-8") as log:  # the command goes to the log, not the screen
            log.write(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}\n")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **stage.env}
        job = ex.submit(stage, cmd, env, log_path)
        st["job_id"] = job.job_id
        st["executor"] = job.info or None  # the same dict: the executor keeps it current
        if stage.experiment == "report":
            # The report renders study.json: let it show the study's final state (every other stage is
            # final by now, as the report depends on all of them). A failure is recorded right after.
            self.save_as_done(stage.name)
        else:
            self.save()
        self.echo(f"[{stage.name}] started{' (' + ' '.join(extra) + ')' if extra else ''}")
        if self.progress:
            self.progress.started(stage.name)
        return job

    def save_as_done(self, name: str) -> None:
        """Write study.json with stage `name` shown as done (its real state stays in memory)."""
        real = dict(self.state[name])
        self.state[name].update(status="done", finished=_now())
        try:
            self.save()
        finally:
            self.state[name] = real

    def _finish(self, stage: Stage, key: str, rc: int, seconds: float) -> str | None:
        """Record a finished command: the marker when it succeeded, else the failure (returned)."""
        st = self.state[stage.name]
        log_path = self.log_dir / f"{stage.name}.log"
        why = None
        if rc != 0:
            why = f"failed (exit {rc})" if rc > 0 else f"was killed by signal {-rc}"
        else:
            missing = [str(p) for p in stage.outputs if not p.exists()]
            if missing:
                why = f"exited 0 but did not write {', '.join(missing)}"
        if why:
            st.update(status="failed", seconds=seconds, finished=_now())
            self.save()
            msg = f"stage {stage.name} {why} after {seconds:.1f} s; log {log_path}, last lines:\n{_tail(log_path)}"
            self._end(stage.name, f"[{stage.name}] {why} after {seconds:.1f} s (log {log_path})")
            return msg
        self._mark_done(stage, key, seconds)
        return None

    def _mark_done(self, stage: Stage, key: str, seconds: float | None) -> None:
        outputs = {str(p.resolve()): fingerprint(p) for p in stage.outputs}
        marker = {"key": key, "stage": stage.name, "finished": _now(), "seconds": seconds,
                  "command": stage.shell(), "outputs": outputs}
        stage.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(stage.run_dir / DONE, marker)  # written last: the stage is done
        self._started_path(stage).unlink(missing_ok=True)
        if seconds is not None:
            append_jsonl(self.study_dir / "timings.jsonl",
                         {"stage": stage.name, "seconds": seconds, "finished": marker["finished"]})
        self._record_outputs(stage, marker)
        self.state[stage.name].update(status="done", seconds=seconds, finished=marker["finished"], key=key)
        self.save()
        self._end(stage.name, f"[{stage.name}] done" + (f" in {seconds:.1f} s" if seconds is not None else ""))


def _drop_launcher_traceback(lines: list[str]) -> tuple[list[str], bool]:
    """Remove accelerate launcher's own `CalledProcessError` traceback, which only repeats that the
    child failed; the child's error stays."""
    out, dropped, i = [], False, 0
    while i < len(lines):
        if lines[i].startswith("Traceback (most recent call last):"):
            j = next((k for k in range(i + 1, len(lines)) if not lines[k].startswith((" ", "\t"))), len(lines))
            if j < len(lines) and "CalledProcessError" in lines[j] and any("accelerate" in x for x in lines[i:j]):
                dropped, i = True, j + 1
                continue
        out.append(lines[i])
        i += 1
    return out, dropped


def _tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    """The log's last n lines, indented, without the launcher's repeat traceback."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    lines, dropped = _drop_launcher_traceback(lines)
    note = ["    (accelerate's CalledProcessError traceback left out; it is in the log)"] if dropped else []
    return "\n".join(["    " + line for line in lines[-n:]] + note)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def python_cmd(script: str, *args: Any) -> list[str]:
    """`python SCRIPT args…` with this interpreter."""
    return [sys.executable, script, *map(str, args)]


def accelerate_cmd(script: str, *args: Any, num_processes: int = 1) -> list[str]:
    """`accelerate launch SCRIPT args…` (gloo on CPU when num_processes > 1).

    No launcher precision: the script's --mixed_precision decides (the study passes its own; `auto`
    is bf16 where the hardware runs it natively), as a launcher flag would override it.
    """
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
           "--dynamo_backend", "no", "--num_processes", str(num_processes)]
    if num_processes > 1:
        cmd.append("--multi_gpu")
    return cmd + [script, *map(str, args)]
