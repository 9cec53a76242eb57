"""The study's stage graph and its cached, resumable, sequential runner.

A stage is one subprocess (a repo CLI, under `accelerate launch` where it is distributed) that
writes one run directory. Stages hand over files: a stage's `inputs` are paths (files or
directories) that earlier stages wrote or the user gave.

Caching: a stage's key is SHA-1 of (name, command, extra config, fingerprints of its inputs).
When the command exits 0 the runner writes `<run_dir>/STAGE_DONE.json` last and atomically,
holding the key and fingerprints of the stage's outputs; a later run skips a stage whose
marker holds the same key. Fingerprints of paths produced by a finished stage are taken from
its marker (a Merkle chain), so checkpoints of gigabytes are hashed once, not on every run.

An interrupted stage (run dir present, no marker) resumes through its CLI's own resume flag
when it has one, otherwise its run dir is removed and it starts over. A stale stage (marker
with another key: config or inputs changed) is removed and re-run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gen.io import append_jsonl, fingerprint, read_json, write_json

DONE = "STAGE_DONE.json"
LOG_TAIL_LINES = 40


class StageFailed(RuntimeError):
    """A stage's command exited non-zero; the message holds its log tail."""


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
# Runner


class Runner:
    """Run stages in order with caching and resume; keep STUDY/study.json up to date."""

    def __init__(self, study_dir: Path, stages: list[Stage], header: dict[str, Any],
                 echo: Callable[[str], None] = print):
        check_graph(stages)
        self.study_dir = Path(study_dir)
        self.stages = stages
        self.by_name = {s.name: s for s in stages}
        self.header = header
        self.echo = echo
        self.log_dir = self.study_dir / "logs"
        self._produced_fp: dict[str, str] = {}  # resolved path -> fingerprint from done markers
        self.state = self._load_state()

    # -- state ------------------------------------------------------------------------------

    def _load_state(self) -> dict[str, dict]:
        path = self.study_dir / "study.json"
        old = read_json(path).get("stages", []) if path.is_file() else []
        by_name = {s["name"]: s for s in old if "name" in s}
        state = {}
        for s in self.stages:
            prev = by_name.get(s.name, {})
            state[s.name] = {"status": prev.get("status", "pending"), "seconds": prev.get("seconds"),
                             "started": prev.get("started"), "finished": prev.get("finished"),
                             "runs": prev.get("runs", 0), "key": prev.get("key")}
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
        """SHA-1 of the stage name, command, extra config and input fingerprints."""
        missing = [str(p) for p in stage.inputs if not p.exists()]
        if missing:
            raise FileNotFoundError(f"stage {stage.name}: input(s) missing: {', '.join(missing)}")
        payload = {"name": stage.name, "command": [str(c) for c in stage.command], "config": stage.config,
                   "inputs": {str(p): self._fingerprint(p) for p in stage.inputs}}
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
        return marker.get("key") == key and all(p.exists() for p in stage.outputs)

    # -- running ----------------------------------------------------------------------------

    def run(self, names: list[str], dry_run: bool = False) -> int:
        """Run the named stages in graph order (skipping cached ones); return how many ran."""
        wanted = set(names)
        ran = 0
        for stage in self.stages:
            if stage.name not in wanted:
                # Still register finished upstream stages so that keys chain through them.
                self._register_if_done(stage)
                continue
            if dry_run:
                self.echo(f"[{stage.name}] deps={','.join(stage.deps) or '-'}\n  {stage.shell()}")
                continue
            for d in stage.deps:
                if self.state[d]["status"] not in ("done", "cached"):
                    if not self._register_if_done(self.by_name[d]):
                        raise StageFailed(f"stage {stage.name} needs {d}, which has not finished; "
                                          f"run without --only/--from, or include {d}")
            key = self.key(stage)
            if self.is_done(stage, key):
                self._record_outputs(stage, read_json(stage.run_dir / DONE))
                self.state[stage.name].update(status="cached", key=key)
                self.echo(f"[{stage.name}] cached")
                self.save()
                continue
            self._execute(stage, key)
            ran += 1
        return ran

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
        if self.state[stage.name]["status"] not in ("done", "cached"):
            self.state[stage.name]["status"] = "cached"
        return True

    def _started_path(self, stage: Stage) -> Path:
        # Beside the run dir, not inside it: some CLIs refuse a run dir that is not empty.
        return stage.run_dir.parent / f".{stage.run_dir.name}.started.json"

    def _prepare_run_dir(self, stage: Stage, key: str) -> list[str]:
        """Clear a stale or interrupted run dir, or keep it and return the resume flag."""
        run = stage.run_dir
        started = self._started_path(stage)
        if (run / DONE).is_file():  # finished with another key: stale
            self.echo(f"[{stage.name}] config or inputs changed: re-running")
            shutil.rmtree(run)
        elif run.exists() and any(run.iterdir()):
            same = started.is_file() and read_json(started).get("key") == key
            if stage.resume_args is not None and same:
                how = " ".join(stage.resume_args) or "re-running the same command"
                self.echo(f"[{stage.name}] resuming an interrupted run ({how})")
                return list(stage.resume_args)
            self.echo(f"[{stage.name}] removing an interrupted run and starting over")
            shutil.rmtree(run)
        return []

    def _execute(self, stage: Stage, key: str) -> None:
        extra = self._prepare_run_dir(stage, key)  # resume args, or [] after clearing
        stage.run_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{stage.name}.log"
        st = self.state[stage.name]
        st.update(status="running", started=_now(), finished=None, key=key, runs=(st.get("runs") or 0) + 1)
        self.save()
        started_path = self._started_path(stage)
        write_json(started_path, {"key": key, "started": st["started"]})
        cmd = [str(c) for c in stage.command] + extra
        self.echo(f"[{stage.name}] running: {stage.shell()}{' ' + ' '.join(extra) if extra else ''}")
        t0 = time.perf_counter()
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}\n")
            log.flush()
            env = {**os.environ, "PYTHONUNBUFFERED": "1", **stage.env}
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    cwd=str(Path(__file__).resolve().parent.parent))
            try:
                rc = proc.wait()
            except KeyboardInterrupt:
                proc.send_signal(signal.SIGINT)
                proc.wait()
                st.update(status="interrupted", seconds=round(time.perf_counter() - t0, 2))
                self.save()
                raise
        seconds = round(time.perf_counter() - t0, 2)
        if rc != 0:
            st.update(status="failed", seconds=seconds, finished=_now())
            self.save()
            raise StageFailed(f"stage {stage.name} failed (exit {rc}) after {seconds:.1f} s; "
                              f"log {log_path}, last lines:\n{_tail(log_path)}")
        missing = [str(p) for p in stage.outputs if not p.exists()]
        if missing:
            st.update(status="failed", seconds=seconds, finished=_now())
            self.save()
            raise StageFailed(f"stage {stage.name} exited 0 but did not write {', '.join(missing)}; "
                              f"log {log_path}, last lines:\n{_tail(log_path)}")
        outputs = {str(p.resolve()): fingerprint(p) for p in stage.outputs}
        marker = {"key": key, "stage": stage.name, "finished": _now(), "seconds": seconds,
                  "command": stage.shell(), "outputs": outputs}
        stage.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(stage.run_dir / DONE, marker)  # written last: the stage is done
        started_path.unlink(missing_ok=True)
        append_jsonl(self.study_dir / "timings.jsonl", {"stage": stage.name, "seconds": seconds, "finished": marker["finished"]})
        self._record_outputs(stage, marker)
        st.update(status="done", seconds=seconds, finished=marker["finished"])
        self.save()
        self.echo(f"[{stage.name}] done in {seconds:.1f} s")


def _tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in lines[-n:])


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def python_cmd(script: str, *args: Any) -> list[str]:
    """`python SCRIPT args…` with this interpreter."""
    return [sys.executable, script, *map(str, args)]


def accelerate_cmd(script: str, *args: Any, num_processes: int = 1) -> list[str]:
    """`accelerate launch SCRIPT args…` (gloo on CPU when num_processes > 1)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--num_processes", str(num_processes)]
    if num_processes > 1:
        cmd.append("--multi_gpu")
    return cmd + [script, *map(str, args)]
