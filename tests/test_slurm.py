"""Studies on a real Slurm cluster (munged + slurmctld + slurmd on localhost, tests/slurm_cluster.py)
through the submitit executor: the same graph and report as the local executor, a stage cancelled
with scancel is reported and resumes, a DDPM job signalled to checkpoint requeues itself and ends
with the uninterrupted run's weights, a re-run reattaches to queued jobs instead of submitting
twice; plus the pieces that need no cluster (kinds, sbatch lines, multi-node launch arguments).

Requeued jobs wait 120 s in Slurm (BeginTime) before they may start again; the tests move that
start time to now with `scontrol update` so they don't sit idle (`BeginTimeBump`)."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from slurm_cluster import LocalSlurm, SlurmUnavailable

from conftest import PYTHON, REPO, run_cli
from echosynth.gen.core.config import ConfigError, parse_config, to_dict
from echosynth.gen.core.io import write_json
from echosynth.pipelines.config import SLURM_KINDS, SlurmConfig, SlurmJobConfig, StudyConfig
from echosynth.pipelines.executor import ExecutorError, Job
from echosynth.pipelines.graph import build_graph, stage_config
from echosynth.pipelines.slurm import (
    Cluster,
    Node,
    SlurmExecutor,
    _gpus,
    _minutes,
    check_config,
    dry_run_lines,
    launch_command,
    mem_mb,
    request_problem,
    sbatch_lines,
    sbatch_parameters,
    stage_kind,
    unrunnable,
)

TINY = REPO / "configs" / "study" / "tiny.yaml"
# Small DDPM runs (16 px, 100 timesteps) as in tests/test_gen_train.py.
DDPM_TRAIN = {"global_batch": 8, "checkpoint_every": 5, "log_every": 1, "sample_per_class": 0,
              "model": {"image_size": 16}, "diffusion": {"num_timesteps": 100}, "lr": 0.001, "warmup_steps": 2,
              "ema_decay": 0.9}


pytestmark = pytest.mark.timeout(1800)  # an idle machine needs 1-3 min per cluster test; a shared one far more


@pytest.fixture(scope="module")
def cluster():
    c = LocalSlurm()
    try:
        c.start()
    except SlurmUnavailable as e:
        pytest.skip(f"a local Slurm cluster cannot start here: {e}")
    yield c
    c.stop()


def write_config(path: Path, name: str, slurm: dict | None = None, **sections) -> Path:
    """tiny.yaml with a test name, section overrides and one-CPU, no-GPU jobs for the local cluster."""
    cfg = yaml.safe_load(TINY.read_text())
    cfg["name"] = name
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    jobs = {k: {"cpus": 1, "gpus": 0, "mem": "", "time": 10} for k in SLURM_KINDS}
    cfg["slurm"] = {**jobs, "poll_s": 0.5, "signal_s": 30, **(slurm or {})}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def study(config: Path, out: Path, *extra: str) -> list[str]:
    return [PYTHON, "pipelines/study.py", "--config", str(config), "--out", str(out), *extra]


def stages(out: Path) -> dict[str, dict]:
    try:
        return {s["name"]: s for s in json.loads((out / "study.json").read_text())["stages"]}
    except (OSError, ValueError, KeyError):
        return {}


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = pred()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the study exited ({proc.returncode}) before {what}:\n"
                                 + (log.read_text()[-3000:] if log else ""))
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


STARTED: list[subprocess.Popen] = []  # background processes of the running test


@pytest.fixture(autouse=True)
def stop_leftovers():
    """A failing test must not leave its study or training running: stop its process groups."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # a study detaches its jobs; the cluster fixture cancels them
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def popen(cmd: list[str], cluster: LocalSlurm | None, log: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env or {**cluster.env, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    STARTED.append(proc)
    return proc


class BeginTimeBump(threading.Thread):
    """Start requeued jobs after SETTLE_S instead of after Slurm's fixed 120 s requeue delay.

    Not at once: the requeued run's step is still being torn down for up to KillWait (5 s) plus
    srun's own wait, and a job started on the node meanwhile can fail to launch.
    """

    SETTLE_S = 12.0

    def __init__(self, cluster: LocalSlurm):
        super().__init__(daemon=True)
        self.cluster, self.stopped, self.bumped = cluster, threading.Event(), 0
        self.pending_since: dict[str, float] = {}

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            for line in self.cluster.run("squeue", "-h", "-o", "%i %r", check=False).splitlines():
                jid, _, reason = line.partition(" ")
                if reason.strip() != "BeginTime":
                    self.pending_since.pop(jid, None)
                    continue
                since = self.pending_since.setdefault(jid, time.monotonic())
                if time.monotonic() - since >= self.SETTLE_S:
                    self.cluster.run("scontrol", "update", f"JobId={jid}", "StartTime=now", check=False)
                    self.pending_since.pop(jid, None)
                    self.bumped += 1


def ddpm_config(tmp: Path, name: str, split_dir: Path, steps: int) -> Path:
    """A study of one DDPM stage (plus nothing else) on the shared test split."""
    return write_config(tmp / f"{name}.yaml", name, dataset={"split_dir": str(split_dir), "subsets": [60]},
                        experiments={"real": False, "privacy_filter": False, "mixing": [], "embed": False},
                        evaluate={"fidelity": {"features": ["inception"]}},
                        ddpm={"train": {"steps": steps, **DDPM_TRAIN}}, only=["ddpm-n60"])


# ----------------------------------------------------------------------------------------------
# Without a cluster


def test_kinds_sbatch_lines_and_checks(tmp_path):
    cfg = parse_config(StudyConfig, ["--config", str(TINY)])
    kinds = {s.name: stage_kind(s) for s in build_graph(cfg, tmp_path)}
    assert kinds["data-phantom"] == kinds["data-split"] == "data"
    assert kinds["ddpm-n60"] == "ddpm_train" and kinds["sample-n60"] == "sample"
    assert kinds["clf-real-n60-madani"] == "classify" and kinds["fidelity-n60"] == kinds["embed-n60"] == "evaluate"
    assert kinds["report"] == "report"
    job = SlurmJobConfig(partition="gpu", account="lab", qos="high", time=600, cpus=16, gpus=4, mem="128G", nodes=2,
                         constraint="a100", extra=["--exclusive", "--mail-type=END"])
    slurm = SlurmConfig(ddpm_train=job, setup=["module load cuda"])
    lines = sbatch_lines(sbatch_parameters(job, "ddpm-n60", slurm, "study x"), tmp_path)
    for want in ("--partition=gpu", "--account=lab", "--qos=high", "--time=600", "--cpus-per-task=16",
                 "--gpus-per-node=4", "--mem=128G", "--nodes=2", "--ntasks-per-node=1", "--constraint=a100",
                 "--exclusive", "--mail-type=END", "--signal=USR2@120", "--job-name=ddpm-n60"):
        assert f"#SBATCH {want}" in lines, (want, lines)
    check_config(slurm)
    with pytest.raises(ConfigError, match="slurm.classify.nodes"):
        check_config(SlurmConfig(classify=SlurmJobConfig(nodes=2)))
    with pytest.raises(ConfigError, match="slurm.signal_s"):
        check_config(SlurmConfig(signal_s=30, sample=SlurmJobConfig(time=1)))
    with pytest.raises(ConfigError, match="not a long sbatch flag"):
        check_config(SlurmConfig(data=SlurmJobConfig(extra=["exclusive"])))
    dry = dry_run_lines(build_graph(cfg, tmp_path), ["ddpm-n60", "report"], slurm, tmp_path)
    assert dry[1].startswith("[ddpm-n60] ddpm_train: ") and "--gpus-per-node=4" in dry[1]
    assert dry[2].startswith("[report] report: ") and "--gpus-per-node" not in dry[2]


def test_dry_run_shows_sbatch_lines(tmp_path, capsys):
    from echosynth.pipelines import study as study_cli

    assert study_cli.main(["--config", str(TINY), "--out", str(tmp_path / "s"), "--executor", "slurm", "--dry-run",
                           "--slurm.ddpm_train.partition", "gpu", "--slurm.ddpm_train.gpus", "2"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("[ddpm-n60] ddpm_train: "))
    assert "--partition=gpu" in line and "--gpus-per-node=2" in line and "--signal=USR2@60" in line  # tiny's signal_s
    assert not (tmp_path / "s").exists()  # a dry run submits and writes nothing


GPU_CLUSTER = Cluster(nodes=[Node("cpu1", 2, 12000, 0, {"debug"}, set()),
                             Node("gpu1", 32, 256000, 4, {"gpu"}, {"a100"}),
                             Node("gpu2", 32, 256000, 4, {"gpu"}, {"a100"})],
                      time_limits={"debug": None, "gpu": 1440}, default_partition="debug")


def test_requests_are_checked_against_the_nodes():
    assert mem_mb("4G") == 4096 and mem_mb("4000") == 4000 and mem_mb("1T") == 1024 ** 2 and mem_mb("") is None
    assert _gpus("gpu:4") == 4 and _gpus("gpu:a100:2(S:0-1),gpu:v100:1") == 3 and _gpus("(null)") == 0
    assert _minutes("infinite") is None and _minutes("1-00:00:00") == 1440 and _minutes("30:00") == 30
    assert _minutes("02:30:00") == 150
    ok = SlurmJobConfig(cpus=2, gpus=0, mem="4G", time=60)
    assert request_problem(ok, "data", GPU_CLUSTER) is None
    # The defaults (8 CPUs, 16G) on the 2-CPU default partition: the key and the largest value that fits.
    assert request_problem(SlurmJobConfig(cpus=8, gpus=0, mem="16G"), "data", GPU_CLUSTER) == (
        "lower slurm.data.cpus to at most 2; lower slurm.data.mem to at most 12000M")
    assert "lower slurm.classify.gpus to at most 0 (this partition has no GPUs)" in request_problem(
        SlurmJobConfig(cpus=1, gpus=1, mem=""), "classify", GPU_CLUSTER)
    gpu = SlurmJobConfig(partition="gpu", cpus=16, gpus=4, mem="128G", time=600, constraint="a100", nodes=2)
    assert request_problem(gpu, "ddpm_train", GPU_CLUSTER) is None
    assert request_problem(dataclasses.replace(gpu, nodes=3), "ddpm_train", GPU_CLUSTER) == \
        "lower slurm.ddpm_train.nodes to at most 2"
    assert request_problem(dataclasses.replace(gpu, time=2000), "ddpm_train", GPU_CLUSTER) == \
        "lower slurm.ddpm_train.time to at most 1440 min (partition gpu's limit)"
    assert "change slurm.ddpm_train.constraint" in request_problem(dataclasses.replace(gpu, constraint="h100"),
                                                                   "ddpm_train", GPU_CLUSTER)
    assert "partition 'big' does not exist" in request_problem(dataclasses.replace(gpu, partition="big"),
                                                               "ddpm_train", GPU_CLUSTER)
    # The whole tiny study: its own slurm: section fits a 2-CPU node; the defaults (GPUs, 8 CPUs) do not.
    cfg = parse_config(StudyConfig, ["--config", str(TINY)])
    graph = build_graph(cfg, Path("/tmp/s"))
    names = [s.name for s in graph]
    assert unrunnable(graph, names, cfg.slurm, GPU_CLUSTER) == []
    bad = unrunnable(graph, names, SlurmConfig(), GPU_CLUSTER)
    assert {line.split("slurm.")[1].split()[0] for line in bad} == set(SLURM_KINDS) - {"report"}  # 2 CPUs, 8G: fits
    data = next(line for line in bad if "slurm.data asks" in line)
    assert data.startswith("stage(s) data-phantom, data-split: slurm.data asks 1 node(s) × 8 CPU(s), 16G memory, "
                           "0 GPU(s), 120 min; the largest node has 2 CPU(s), 12000M memory, 0 GPU(s) (partition debug)")


def _pending_executor(monkeypatch, reason: str, kind: str = "data", **job):
    """A SlurmExecutor (no cluster) whose squeue shows one job PENDING for `reason`; the scancels it ran."""
    ex = object.__new__(SlurmExecutor)
    ex.cfg = SlurmConfig(**{kind: SlurmJobConfig(**job)})
    ex._queue, ex._queue_t, ex._gone, ex._logs, ex._cluster_info = {"7": ("PENDING", reason)}, 1e18, {}, {}, None
    ex.study_dir, ex.echo, ex.poll_s = Path("/nonexistent"), print, 1.0
    cancelled = []
    monkeypatch.setattr("echosynth.pipelines.slurm.cluster_info", lambda: GPU_CLUSTER)
    monkeypatch.setattr("echosynth.pipelines.slurm._run", lambda cmd, timeout=120: cancelled.append(cmd))
    monkeypatch.setattr(SlurmExecutor, "_note", lambda self, job, msg: None)
    return ex, Job(stage="data-phantom", job_id="7", handle=object(), info={"kind": kind, "slurm_state": "PENDING"}), cancelled


@pytest.mark.parametrize("reason", ["Resources", "Priority", "BeginTime", "JobHeldUser", "QOSMaxCpuPerUserLimit"])
def test_pending_reasons_that_resolve_keep_waiting(monkeypatch, reason):
    ex, job, cancelled = _pending_executor(monkeypatch, reason, cpus=64)
    assert ex.poll(job) is None and not cancelled


def test_pending_reasons_that_never_resolve_stop_the_study(monkeypatch):
    ex, job, cancelled = _pending_executor(monkeypatch, "PartitionConfig", cpus=64, gpus=0, mem="16G", time=120)
    with pytest.raises(ExecutorError) as err:
        ex.poll(job)
    msg = str(err.value)
    assert err.value.stage == "data-phantom" and cancelled == [["scancel", "7"]]
    assert msg.startswith("stage data-phantom: Slurm job 7 cannot start (PartitionConfig): slurm.data asks "
                          "1 node(s) × 64 CPU(s), 16G memory, 0 GPU(s), 120 min; the largest node has 2 CPU(s)")
    assert "lower slurm.data.cpus to at most 2" in msg and "The job was cancelled." in msg
    # ReqNodeNotAvail: fatal only when no node could run the job; a 1-CPU job waits for its node.
    ex, job, cancelled = _pending_executor(monkeypatch, "ReqNodeNotAvail, UnavailableNodes:cpu1", cpus=1, gpus=0, mem="")
    assert ex.poll(job) is None and not cancelled
    ex, job, cancelled = _pending_executor(monkeypatch, "ReqNodeNotAvail, UnavailableNodes:cpu1", cpus=1, gpus=9)
    with pytest.raises(ExecutorError, match="lower slurm.data.gpus to at most 0"):
        ex.poll(job)


def test_launch_command_one_process_per_gpu_and_multi_node(monkeypatch, cluster):
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--num_processes", "1", "gen/train.py", "--steps", "5"]
    one = launch_command(cmd, gpus=4, nodes=1, port=29500)
    assert one[:3] == cmd[:3] and one[-3:] == ["gen/train.py", "--steps", "5"]
    assert "--multi_gpu" in one and one[one.index("--num_processes") + 1] == "4" and "--machine_rank" not in one
    assert launch_command(cmd, gpus=0, nodes=1, port=29500).count("--multi_gpu") == 0
    # Node 1 of a 2-node job: rank, first host of the node list (scontrol show hostnames), port + job ID.
    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    monkeypatch.setenv("SLURM_NODEID", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    two = launch_command(cmd, gpus=4, nodes=2, port=29500)
    opt = {two[i]: two[i + 1] for i in range(3, len(two) - 3) if two[i].startswith("--") and i + 1 < len(two)}
    assert opt["--num_machines"] == "2" and opt["--num_processes"] == "8" and opt["--machine_rank"] == "1"
    assert opt["--main_process_ip"] == "gpu07" and opt["--main_process_port"] == str(29500 + 456)
    assert opt["--mixed_precision"] == "no" and "--multi_gpu" in two


# ----------------------------------------------------------------------------------------------
# On the cluster


def _report_tables(out: Path) -> dict[str, list[list[str]]]:
    tables = {}
    for p in sorted((out / "tables").glob("*.csv")):
        if p.name != "timings.csv":  # seconds differ between runs
            tables[p.name] = list(csv.reader(p.open()))
    return tables


def test_tiny_study_through_slurm_matches_local(cluster, tmp_path):
    """Data, a classifier and the report (the tiny study's smallest complete graph), locally and on
    Slurm: the same stages and deps, every stage a job, the same report tables and sections."""
    small = {"experiments": {"synthetic": False, "mixing": [], "embed": False}}
    cfg = write_config(tmp_path / "small.yaml", "tiny-slurm", **small)
    local, remote = tmp_path / "local", tmp_path / "slurm"
    run_cli(study(cfg, local, "--jobs", "1"), env=cluster.env, timeout=1200)
    proc = run_cli(study(cfg, remote, "--executor", "slurm"), env=cluster.env, timeout=1200)
    a, b = stages(local), stages(remote)
    assert list(a) == list(b) == ["data-phantom", "data-split", "clf-real-n60-madani", "report"]
    assert all(a[n]["deps"] == b[n]["deps"] for n in a)
    ids = []
    for name, s in b.items():
        assert s["status"] == "done", (name, s["status"])
        info = s["executor"]
        assert info["executor"] == "slurm" and info["slurm_state"] == "COMPLETED" and info["job_id"] == s["job_id"]
        assert Path(info["slurm_log"]).is_file() and f"submitted job {s['job_id']}" in Path(s["log"]).read_text()
        assert cluster.job_info(s["job_id"])["JobName"] == name
        ids.append(int(s["job_id"]))
    assert len(set(ids)) == 4 and ids == sorted(ids)  # one job per stage, in dependency order
    assert "study: 4 stage(s) ran" in proc.stdout
    assert _report_tables(local) == _report_tables(remote) and _report_tables(remote)
    heads = [re.findall(r"<h2[^>]*>([^<]*)", (d / "report.html").read_text()) for d in (local, remote)]
    assert heads[0] == heads[1] and "Classification" in heads[1]
    # --status: the table from study.json, nothing submitted.
    before = len(list((remote / "slurm").glob("*_submission.sh")))
    table = run_cli(study(cfg, remote, "--executor", "slurm", "--status"), env=cluster.env).stdout
    assert re.search(rf"clf-real-n60-madani\s+done\s+{b['clf-real-n60-madani']['job_id']}\s+COMPLETED", table), table
    assert len(list((remote / "slurm").glob("*_submission.sh"))) == before


def test_scancel_is_reported_and_resumable(cluster, split_dir, tmp_path):
    cfg = ddpm_config(tmp_path, "scancel", split_dir, steps=15)
    out, log = tmp_path / "s", tmp_path / "run1.log"
    proc = popen(study(cfg, out, "--executor", "slurm"), cluster, log)
    run = out / "runs" / "ddpm-n60"
    jid = wait_for(lambda: list((run / "checkpoints").glob("step-*")) and stages(out)["ddpm-n60"]["job_id"],
                   900, "the DDPM job's first checkpoint", proc, log)
    cluster.run("scancel", str(jid))
    assert proc.wait(timeout=300) == 1
    text = log.read_text()
    assert f"Slurm job {jid} was cancelled" in text and "ddpm-n60" in text and "last lines:" in text
    s = stages(out)["ddpm-n60"]
    assert s["status"] == "failed" and s["executor"]["slurm_state"] == "CANCELLED"
    assert not (run / "STAGE_DONE.json").exists()
    # Re-run: the cancelled stage continues from its checkpoint in a new job.
    again = run_cli(study(cfg, out, "--executor", "slurm"), env=cluster.env, timeout=1200)
    assert "[ddpm-n60] resuming an interrupted run (--resume latest)" in again.stdout
    s = stages(out)["ddpm-n60"]
    assert s["status"] == "done" and s["job_id"] != jid and s["runs"] == 2
    assert (run / "checkpoints" / "step-0000015").is_dir() and "resumed from" in (run / "log.txt").read_text()


def test_signalled_ddpm_requeues_and_matches_uninterrupted(cluster, split_dir, tmp_path):
    """USR2 (what `--signal=USR2@signal_s` sends before the time limit, here sent with
    `scancel --signal=USR2` once a checkpoint exists): the job checkpoints, requeues itself under
    the same ID, resumes, and its final weights equal an uninterrupted run's."""
    steps = 20
    cfg = ddpm_config(tmp_path, "requeue", split_dir, steps=steps)
    out, log = tmp_path / "s", tmp_path / "run.log"
    stage = next(s for s in build_graph(parse_config(StudyConfig, ["--config", str(cfg), "--out", str(out)]),
                                        out.resolve()) if s.name == "ddpm-n60")
    ref = tmp_path / "ref"
    cmd = [str(c) for c in stage.command]
    cmd[cmd.index("--config") + 1] = str(tmp_path / "ref.json")
    write_json(tmp_path / "ref.json", to_dict(stage_config(stage.settings, {"run_dir": str(ref)})))
    reference = popen(cmd, None, tmp_path / "ref.log", env={**os.environ, **stage.env})  # meanwhile, on the other core
    bump = BeginTimeBump(cluster)
    bump.start()
    try:
        proc = popen(study(cfg, out, "--executor", "slurm"), cluster, log)
        run = out / "runs" / "ddpm-n60"
        jid = wait_for(lambda: list((run / "checkpoints").glob("step-*")) and stages(out)["ddpm-n60"]["job_id"],
                       900, "the DDPM job's first checkpoint", proc, log)
        cluster.run("scancel", "--signal=USR2", str(jid))
        assert proc.wait(timeout=1200) == 0, log.read_text()[-3000:]
    finally:
        bump.stopped.set()
    assert reference.wait(timeout=1200) == 0
    s = stages(out)["ddpm-n60"]
    assert s["status"] == "done" and s["job_id"] == jid and s["runs"] == 1  # one job, requeued, never resubmitted
    assert int(cluster.job_info(jid)["Restarts"]) == 1
    stage_log = (out / "logs" / "ddpm-n60.log").read_text()
    assert f"job {jid} signalled" in stage_log and "requeued to continue" in stage_log
    assert re.search(r"restarted \(start 2\): --resume latest", stage_log), stage_log[-2000:]
    assert "SIGTERM: stopping after this step" in stage_log  # gen/train.py checkpointed on the way out
    assert "resumed from" in (run / "log.txt").read_text()
    final = f"checkpoints/step-{steps:07d}"
    for part in ("ema.safetensors", "model.safetensors"):
        wa, wb = load_file(str(ref / final / part)), load_file(str(run / final / part))
        assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa), part


def test_rerun_while_queued_reattaches(cluster, tmp_path):
    """A study stopped while its job is queued leaves the job; the next run (with other resources,
    which are not part of a stage's identity) waits for that job instead of submitting again."""
    cfg = write_config(tmp_path / "held.yaml", "held", slurm={"data": {"cpus": 1, "gpus": 0, "mem": "", "time": 10,
                                                                      "extra": ["--hold"]}}, only=["data"])
    out, log1, log2 = tmp_path / "s", tmp_path / "run1.log", tmp_path / "run2.log"
    first = popen(study(cfg, out, "--executor", "slurm"), cluster, log1)
    jid = wait_for(lambda: stages(out).get("data-phantom", {}).get("job_id"), 600, "data-phantom's job", first, log1)
    assert cluster.jobs()[jid] == "PENDING"  # held
    table = run_cli(study(cfg, out, "--executor", "slurm", "--status"), env=cluster.env).stdout
    assert re.search(rf"data-phantom\s+running\s+{jid}\s+PENDING \(JobHeldUser\)", table), table
    first.send_signal(signal.SIGTERM)  # as Ctrl-C; no terminal to ask on and no --cancel-on-exit: jobs stay
    assert first.wait(timeout=300) == 130
    assert f"left Slurm job(s) {jid} queued" in log1.read_text() and jid in cluster.jobs()
    second = popen(study(cfg, out, "--executor", "slurm", "--slurm.data.extra", ""), cluster, log2)
    wait_for(lambda: f"[data-phantom] reattached to job {jid}" in log2.read_text(), 600, "the reattach", second, log2)
    cluster.run("scontrol", "release", jid)
    assert second.wait(timeout=900) == 0, log2.read_text()[-3000:]
    s = stages(out)
    assert s["data-phantom"]["job_id"] == jid and s["data-phantom"]["status"] == s["data-split"]["status"] == "done"
    ours = [i for i in cluster.run("scontrol", "show", "job", "-o").splitlines() if f"echosynth study {out}" in i]
    assert len(ours) == 2 and sum("JobName=data-phantom " in i for i in ours) == 1  # nothing submitted twice
    assert len(list((out / "slurm").glob("*_submission.sh"))) == 2


def test_cancel_on_exit(cluster, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", "cancel", slurm={"data": {"cpus": 1, "gpus": 0, "mem": "", "time": 10,
                                                                    "extra": ["--hold"]}}, only=["data-phantom"])
    out, log = tmp_path / "s", tmp_path / "run.log"
    proc = popen(study(cfg, out, "--executor", "slurm", "--cancel-on-exit"), cluster, log)
    jid = wait_for(lambda: stages(out).get("data-phantom", {}).get("job_id"), 600, "data-phantom's job", proc, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 130
    assert f"cancelled Slurm job(s) {jid}" in log.read_text()
    assert jid not in cluster.jobs() and cluster.job_info(jid)["JobState"] == "CANCELLED"


def test_tiny_study_with_its_own_config_runs_to_its_report(cluster, tmp_path):
    """configs/study/tiny.yaml as a new user runs it on a 2-CPU node without a GPU: no resource overrides."""
    out = tmp_path / "tiny"
    dry = run_cli(study(TINY, out, "--executor", "slurm", "--dry-run"), env=cluster.env)
    assert "# slurm: every request fits a node of the cluster (largest: 2 CPU(s)" in dry.stdout
    proc = run_cli(study(TINY, out, "--executor", "slurm"), env=cluster.env, timeout=1500)
    assert (out / "report.html").is_file(), proc.stdout[-3000:]
    s = stages(out)
    assert s and all(v["status"] == "done" and v["executor"]["slurm_state"] == "COMPLETED" for v in s.values()), s


def test_a_request_no_node_can_satisfy_stops_the_study_with_one_error(cluster, tmp_path):
    """64 CPUs on a 2-CPU node: checked before submitting (and by --dry-run); with the check off, the
    job's PartitionConfig pending reason stops the study within a minute or two. No traceback."""
    out = tmp_path / "s"
    dry = run_cli(study(TINY, out, "--executor", "slurm", "--dry-run", "--slurm.data.cpus", "64"), env=cluster.env,
                  check=False)
    assert dry.returncode == 2 and "slurm.data asks 1 node(s) × 64 CPU(s)" in dry.stderr
    assert "lower slurm.data.cpus to at most 2" in dry.stderr and "Traceback" not in dry.stderr
    t0 = time.monotonic()
    pre = run_cli(study(TINY, out, "--executor", "slurm", "--slurm.data.cpus", "64"), env=cluster.env, check=False)
    assert pre.returncode == 2 and "nothing was submitted" in pre.stderr and "Traceback" not in pre.stderr
    assert not cluster.jobs()
    pending = run_cli(study(TINY, out, "--executor", "slurm", "--slurm.data.cpus", "64", "--slurm.check_nodes", "false"),
                      env=cluster.env, check=False, timeout=300)
    assert time.monotonic() - t0 < 150
    err = pending.stderr
    assert pending.returncode == 1 and "Traceback" not in err, err
    assert re.search(r"stage data-phantom: Slurm job \d+ cannot start \(PartitionConfig\): slurm.data asks 1 node\(s\) "
                     r"× 64 CPU\(s\), 2G memory, 0 GPU\(s\), 30 min; the largest node has 2 CPU\(s\)", err), err
    assert "lower slurm.data.cpus to at most 2" in err and not cluster.jobs()  # the job was cancelled
    assert stages(out)["data-phantom"]["status"] == "failed"
