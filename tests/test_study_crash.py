"""The study runner under kills: a runner SIGKILLed at seeded random points and re-run with
--jobs 2 ends with the same outputs as an uninterrupted sequential run; Ctrl-C and SIGKILL of the
runner leave no stage process alive; a second runner on the same study directory is refused,
naming the PID; `gen/prepare.py phantom`'s pool workers die with it."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PYTHON, REPO

# A stand-in stage: three parts written one by one (atomically; a resumed run keeps those it has),
# then out.txt; every byte depends only on the stage name and the inputs' contents.
STEP = r"""
import hashlib, os, sys, time, pathlib
run, pause, inputs = pathlib.Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
run.mkdir(parents=True, exist_ok=True)
h = hashlib.sha1(run.name.encode() + b"".join(pathlib.Path(p).read_bytes() for p in inputs)).hexdigest()
for i in range(3):
    part = run / f"part{i}"
    if not part.exists():
        time.sleep(pause)
        tmp = run / f".part{i}.tmp"
        tmp.write_text(hashlib.sha1(f"{h}:{i}".encode()).hexdigest())
        os.replace(tmp, part)
out = hashlib.sha1("".join((run / f"part{i}").read_text() for i in range(3)).encode()).hexdigest()
tmp = run / ".out.tmp"
tmp.write_text(out)
os.replace(tmp, run / "out.txt")
"""

# Runs the graph described in a JSON file under the study lock, as study.py does.
DRIVER = r"""
import json, sys, pathlib
from echosynth.pipelines.executor import LocalExecutor
from echosynth.pipelines.stages import Runner, Stage, StageFailed, StudyLock, StudyLocked
spec = json.loads(pathlib.Path(sys.argv[1]).read_text())
root = pathlib.Path(spec["root"])
stages = [Stage(s["name"], s["command"], pathlib.Path(s["run_dir"]), inputs=[pathlib.Path(p) for p in s["inputs"]],
                outputs=[pathlib.Path(p) for p in s["outputs"]], deps=s["deps"], resume_args=s["resume_args"])
          for s in spec["stages"]]
try:
    lock = StudyLock(root).acquire()
except StudyLocked as e:
    print(f"error: {e}", file=sys.stderr); sys.exit(2)
ex = LocalExecutor(spec["jobs"], keep_fds=(lock.fd,), grace_s=spec.get("grace_s", 15))
try:
    Runner(root, stages, {}, executor=ex).run([s.name for s in stages])
except StageFailed as e:
    print(e, file=sys.stderr); sys.exit(1)
except KeyboardInterrupt:
    sys.exit(130)
finally:
    ex.close()
    lock.release()
"""

# name -> (deps, resumable): two branches that join, and one that stands alone.
GRAPH = {"a": ([], True), "b": (["a"], False), "c": (["a"], True), "d": ([], False),
         "e": (["c", "d"], False), "f": (["b", "e"], True), "g": ([], True)}


def _write_graph(root: Path, jobs: int, pause: float = 0.12) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "src.txt").write_text("echo")
    stages = []
    for name, (deps, resumable) in GRAPH.items():
        run = root / "runs" / name
        inputs = [str(root / "runs" / d / "out.txt") for d in deps] or [str(root / "src.txt")]
        stages.append({"name": name, "command": [sys.executable, "-c", STEP, str(run), str(pause), *inputs],
                       "run_dir": str(run), "inputs": inputs, "outputs": [str(run / "out.txt")], "deps": deps,
                       "resume_args": [] if resumable else None})
    spec = root / "graph.json"
    spec.write_text(json.dumps({"root": str(root), "jobs": jobs, "stages": stages}))
    return spec


def _default_sigint() -> None:
    # As in a terminal: a shell's background job (`… &`, e.g. a CI step) inherits SIGINT ignored.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _driver(spec: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-c", DRIVER, str(spec)], cwd=REPO, start_new_session=True,
                            preexec_fn=_default_sigint, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _outputs(root: Path) -> dict[str, str]:
    return {n: (root / "runs" / n / "out.txt").read_text() for n in GRAPH}


def _statuses(root: Path) -> dict[str, str]:
    try:
        return {s["name"]: s["status"] for s in json.loads((root / "study.json").read_text())["stages"]}
    except (OSError, ValueError, KeyError):
        return {}


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_dead(pids: list[int], timeout: float = 20) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def test_kill_and_resume_with_two_jobs_matches_sequential(tmp_path):
    seq = _write_graph(tmp_path / "seq", jobs=1)
    p = _driver(seq)
    assert p.wait(timeout=120) == 0, p.stderr.read()
    expected = _outputs(tmp_path / "seq")

    root = tmp_path / "par"
    spec = _write_graph(root, jobs=2)
    rng = random.Random(20261201)
    mid_stage = 0  # kills that hit while a stage was running
    for _ in range(5):
        p = _driver(spec)
        time.sleep(rng.uniform(0.2, 1.6))
        if p.poll() is None:
            mid_stage += "running" in _statuses(root).values()
            os.killpg(p.pid, signal.SIGKILL)  # the runner's group; its stages have groups of their own
        p.wait(timeout=60)
    p = _driver(spec)
    assert p.wait(timeout=120) == 0, p.stderr.read()
    assert mid_stage >= 1, "no kill landed inside a stage: the test proved nothing"
    assert _outputs(root) == expected
    assert set(_statuses(root).values()) <= {"done", "cached"}
    assert all((root / "runs" / n / "STAGE_DONE.json").is_file() for n in GRAPH)
    assert not list(root.glob("runs/.*.started.json"))  # every started record was closed by a marker


# A stage that starts a grandchild, records both PIDs, ignores SIGINT (so the runner has to
# escalate) and sleeps.
STUBBORN = r"""
import json, signal, subprocess, sys, time, pathlib
run = pathlib.Path(sys.argv[1]); run.mkdir(parents=True, exist_ok=True)
kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
signal.signal(signal.SIGINT, signal.SIG_IGN)
(run / "pids.json").write_text(json.dumps([__import__("os").getpid(), kid.pid]))
time.sleep(120)
"""


def _stubborn_graph(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    run = root / "runs" / "slow"
    spec = root / "graph.json"
    spec.write_text(json.dumps({"root": str(root), "jobs": 2, "grace_s": 1.0, "stages": [
        {"name": "slow", "command": [sys.executable, "-c", STUBBORN, str(run)], "run_dir": str(run), "inputs": [],
         "outputs": [str(run / "never")], "deps": [], "resume_args": None}]}))
    return run / "pids.json"


def _wait_file(path: Path, proc: subprocess.Popen, timeout: float = 60) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file():
            return json.loads(path.read_text())
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def test_ctrl_c_stops_every_stage_process_group(tmp_path):
    pids_file = _stubborn_graph(tmp_path)
    p = _driver(tmp_path / "graph.json")
    pids = _wait_file(pids_file, p)
    t0 = time.time()
    os.kill(p.pid, signal.SIGINT)  # what Ctrl-C sends (the stage, in its own session, gets nothing)
    assert p.wait(timeout=30) == 130
    assert _wait_dead(pids, 5) == [], "a stage process outlived the interrupted runner"
    assert time.time() - t0 < 10  # SIGINT ignored -> SIGTERM after the 1 s grace
    assert _statuses(tmp_path) == {"slow": "interrupted"}
    assert not (tmp_path / "runs" / "slow" / "STAGE_DONE.json").exists()


def test_killed_runner_takes_its_stages_along_and_the_lock_waits(tmp_path):
    pids_file = _stubborn_graph(tmp_path)
    p = _driver(tmp_path / "graph.json")
    pids = _wait_file(pids_file, p)
    os.kill(p.pid, signal.SIGKILL)  # the runner alone: no chance to clean up
    p.wait(timeout=10)
    assert _wait_dead(pids, 20) == [], "the guard did not stop the dead runner's stages"
    # With the stages gone, the lock is free again.
    from echosynth.pipelines.stages import StudyLock

    with StudyLock(tmp_path, wait_s=10, echo=lambda s: None) as lock:
        assert lock.fd is not None


def test_second_runner_on_the_same_study_is_refused(tmp_path, capsys):
    from echosynth.pipelines import study

    pids_file = _stubborn_graph(tmp_path)
    p = _driver(tmp_path / "graph.json")
    try:
        _wait_file(pids_file, p)
        second = _driver(tmp_path / "graph.json")
        assert second.wait(timeout=60) == 2
        assert f"in use by another pipelines/study.py (PID {p.pid})" in second.stderr.read()
        # study.py itself says the same, before touching anything.
        before = (tmp_path / "study.json").read_text()
        assert study.main(["--config", "configs/study/tiny.yaml", "--out", str(tmp_path)]) == 2
        assert f"(PID {p.pid})" in capsys.readouterr().err
        assert (tmp_path / "study.json").read_text() == before
    finally:
        os.kill(p.pid, signal.SIGINT)
        p.wait(timeout=30)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_phantom_pool_workers_die_with_prepare(tmp_path):
    p = subprocess.Popen([PYTHON, "gen/prepare.py", "phantom", "--out", str(tmp_path / "ph"), "--n", "20000",
                          "--size", "64", "--workers", "2"], cwd=REPO, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, kids = time.time() + 120, []
    while time.time() < deadline and len(kids) < 2 and p.poll() is None:
        kids = [int(k) for k in subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True,
                                                text=True).stdout.split()]
        time.sleep(0.1)
    assert len(kids) == 2, "the phantom pool did not start"
    time.sleep(0.5)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    left = _wait_dead(kids, 10)
    for k in left:
        os.kill(k, signal.SIGKILL)
    assert left == [], "pool workers outlived a kill -9 of prepare.py"
