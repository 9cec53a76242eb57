"""The study runner on stand-in stages (plain `python -c` commands): caching, staleness, resume,
failure with the log tail, stage selection, the study config / graph, concurrency (--jobs),
failure isolation, complete-but-unmarked stages, progress, the report's final state, and the
dry run's checks of every stage's settings."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from echosynth.gen.core.io import write_json
from echosynth.pipelines.stages import DONE, Runner, Stage, StageFailed, select

# A stand-in CLI: copies its input (upper-cased) into RUN/out.txt, records each call's argv in
# RUN/calls.jsonl, and fails once (leaving partial output) while FAIL_ONCE exists.
SCRIPT = r"""
import json, sys, pathlib
src, run = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
run.mkdir(parents=True, exist_ok=True)
with open(run / "calls.jsonl", "a") as f:
    f.write(json.dumps(sys.argv[3:]) + "\n")
fail = run.parent / "FAIL_ONCE"
if fail.exists():
    fail.unlink()
    print("boom: simulated crash in the middle of the stage")
    sys.exit(3)
(run / "out.txt").write_text(src.read_text().upper())
"""


def _stages(tmp: Path, resume: bool = False) -> list[Stage]:
    src = tmp / "input.txt"
    a_run, b_run = tmp / "runs" / "a", tmp / "runs" / "b"
    a = Stage("a", [sys.executable, "-c", SCRIPT, src, a_run], a_run, inputs=[src], outputs=[a_run / "out.txt"],
              experiment="first", resume_args=["--resume"] if resume else None)
    b = Stage("b", [sys.executable, "-c", SCRIPT, a_run / "out.txt", b_run], b_run, inputs=[a_run / "out.txt"],
              outputs=[b_run / "out.txt"], deps=["a"], experiment="second")
    return [a, b]


def _calls(run: Path) -> list[list[str]]:
    return [json.loads(line) for line in (run / "calls.jsonl").read_text().splitlines()]


def test_runner_caches_and_reruns_on_changed_input(tmp_path):
    (tmp_path / "input.txt").write_text("echo")
    stages = _stages(tmp_path)
    assert Runner(tmp_path, stages, {"name": "t"}, echo=lambda s: None).run(["a", "b"]) == 2
    assert (tmp_path / "runs" / "b" / "out.txt").read_text() == "ECHO"
    study = json.loads((tmp_path / "study.json").read_text())
    assert [s["name"] for s in study["stages"]] == ["a", "b"]
    assert all(s["status"] == "done" and s["seconds"] > 0 for s in study["stages"])
    assert study["stages"][1]["deps"] == ["a"] and study["stages"][1]["run_dir"].endswith("runs/b")
    assert (tmp_path / "runs" / "a" / DONE).is_file() and (tmp_path / "logs" / "a.log").is_file()

    # Unchanged config and inputs: nothing runs.
    assert Runner(tmp_path, _stages(tmp_path), {}, echo=lambda s: None).run(["a", "b"]) == 0
    assert [s["status"] for s in json.loads((tmp_path / "study.json").read_text())["stages"]] == ["cached"] * 2
    assert len(_calls(tmp_path / "runs" / "a")) == 1

    # A changed input re-runs the stage and, through its new output, the stage after it.
    (tmp_path / "input.txt").write_text("synth")
    assert Runner(tmp_path, _stages(tmp_path), {}, echo=lambda s: None).run(["a", "b"]) == 2
    assert (tmp_path / "runs" / "b" / "out.txt").read_text() == "SYNTH"
    # A changed command (config) re-runs only that stage.
    changed = _stages(tmp_path)
    changed[1].command.append("--extra")
    assert Runner(tmp_path, changed, {}, echo=lambda s: None).run(["a", "b"]) == 1


def test_failure_keeps_finished_stages_and_resume(tmp_path):
    (tmp_path / "input.txt").write_text("x")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "FAIL_ONCE").write_text("")
    with pytest.raises(StageFailed, match="(?s)stage a failed.*boom: simulated crash"):
        Runner(tmp_path, _stages(tmp_path, resume=True), {}, echo=lambda s: None).run(["a", "b"])
    state = {s["name"]: s["status"] for s in json.loads((tmp_path / "study.json").read_text())["stages"]}
    assert state == {"a": "failed", "b": "pending"}
    assert not (tmp_path / "runs" / "a" / DONE).exists()
    # Re-run: the interrupted stage continues through its CLI's resume flag, keeping its run dir.
    assert Runner(tmp_path, _stages(tmp_path, resume=True), {}, echo=lambda s: None).run(["a", "b"]) == 2
    assert _calls(tmp_path / "runs" / "a") == [[], ["--resume"]]


def test_interrupted_stage_without_resume_restarts_clean(tmp_path):
    (tmp_path / "input.txt").write_text("x")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "FAIL_ONCE").write_text("")
    with pytest.raises(StageFailed):
        Runner(tmp_path, _stages(tmp_path), {}, echo=lambda s: None).run(["a", "b"])
    Runner(tmp_path, _stages(tmp_path), {}, echo=lambda s: None).run(["a", "b"])
    assert _calls(tmp_path / "runs" / "a") == [[]]  # the failed attempt's run dir was removed


def test_only_and_from_selection(tmp_path):
    (tmp_path / "input.txt").write_text("x")
    stages = _stages(tmp_path)
    assert select(stages, ["first"]) == ["a"]
    assert select(stages, ["second"]) == ["a", "b"]  # ancestors come along (skipped when cached)
    assert select(stages, None, "b") == ["a", "b"]
    with pytest.raises(ValueError, match="no stage matches 'zzz'"):
        select(stages, ["zzz"])
    # Running b alone while a is unfinished is refused with advice.
    with pytest.raises(StageFailed, match="needs a"):
        Runner(tmp_path, stages, {}, echo=lambda s: None).run(["b"])
    assert Runner(tmp_path, stages, {}, echo=lambda s: None).run(select(stages, ["second"])) == 2
    assert Runner(tmp_path, _stages(tmp_path), {}, echo=lambda s: None).run(select(stages, ["second"])) == 0


def test_graph_and_dry_run(tmp_path, capsys):
    from echosynth.pipelines import study
    from echosynth.pipelines.graph import build_graph

    assert study.main(["--out", str(tmp_path / "s"), "--dry-run", "--experiments.ablation", "true",
                       "--experiments.sample_size", "10,20", "--experiments.training_time", "5,10"]) == 0
    out = capsys.readouterr().out
    assert "gen/train.py" in out and "accelerate.commands.launch" in out and "reports/build.py" in out
    assert not (tmp_path / "s").exists()  # a dry run writes nothing
    cfg = study.parse_config(study.StudyConfig, ["--experiments.ablation", "true", "--experiments.training_time", "5,10"])
    stages = build_graph(cfg, tmp_path)
    names = [s.name for s in stages]
    assert names[:2] == ["data-phantom", "data-split"] and names[-1] == "report"
    for s in stages:  # explicit graph: every dependency comes earlier
        assert all(names.index(d) < names.index(s.name) for d in s.deps)
    assert {"ablation-learned-linear", "ablation-fixed-cosine", "trainingtime-ddpm"} <= set(names)
    assert all(s.resume_args == ["--resume", "latest"] for s in stages if s.name.startswith("ddpm-"))
    with pytest.raises(SystemExit):
        study.parse_config(study.StudyConfig, ["--dataset.subsets", "400,200"])


def test_fidelity_stages_get_the_gate_thresholds(tmp_path):
    """The study's `gate:` section goes to every stage that scores a synthetic set, so changing it re-runs them."""
    from echosynth.pipelines import study
    from echosynth.pipelines.graph import build_graph

    flags = ["--experiments.ablation", "true", "--experiments.sample_size", "10,20"]
    default = {s.name: s for s in build_graph(study.parse_config(study.StudyConfig, flags), tmp_path)}
    cfg = study.parse_config(study.StudyConfig, [*flags, "--gate.min_class_ratio", "0.8", "--gate.fid_features", "echo"])
    strict = {s.name: s for s in build_graph(cfg, tmp_path)}
    scored = [n for n, s in strict.items() if s.section == "evaluate.fidelity" and s.settings.fake]
    assert {"fidelity-n200", "samplesize-fidelity", "ablation-fixed-cosine-fidelity"} <= set(scored)
    for name in scored:
        assert study.to_dict(strict[name].settings)["gate"] == {
            "min_class_ratio": 0.8, "max_fid_over_floor": 10.0, "fid_features": "echo", "outside_factor": 3.0,
            "outside_margin": 5.0}, name
        assert default[name].settings != strict[name].settings  # the resolved config is part of the stage's cache key
    others = [n for n in strict if n not in scored]
    assert others and all(default[n].settings == strict[n].settings for n in others)  # nothing else re-runs


# ----------------------------------------------------------------------------------------------
# Concurrency, failure isolation, idempotent resume, progress, the final state, settings checks

# Records its start and end time in RUN/times.json after sleeping argv[2] seconds; exits 3 when argv[3] == "fail".
TIMED = r"""
import json, sys, time, pathlib
run = pathlib.Path(sys.argv[1]); run.mkdir(parents=True, exist_ok=True)
t0 = time.time()
if sys.argv[3:] == ["fail"]:
    print("boom: this stage always fails"); sys.exit(3)
time.sleep(float(sys.argv[2]))
(run / "times.json").write_text(json.dumps([t0, time.time()]))
"""


def _timed(tmp: Path, name: str, seconds: float, deps=(), fail: bool = False, experiment: str = "") -> Stage:
    run = tmp / "runs" / name
    return Stage(name, [sys.executable, "-c", TIMED, run, seconds, *(["fail"] if fail else [])], run,
                 outputs=[run / "times.json"], deps=list(deps), experiment=experiment)


def test_independent_stages_overlap(tmp_path):
    from echosynth.pipelines.executor import default_jobs

    stages = [_timed(tmp_path, "a", 1.5), _timed(tmp_path, "b", 1.5), _timed(tmp_path, "c", 0.1, deps=["a", "b"])]
    assert Runner(tmp_path, stages, {}, echo=lambda s: None, jobs=2).run(["a", "b", "c"]) == 3
    (a0, a1), (b0, b1), (c0, _) = (json.loads((tmp_path / "runs" / n / "times.json").read_text()) for n in "abc")
    assert a0 < b1 and b0 < a1, "a and b did not run at the same time"
    assert c0 >= max(a1, b1)  # c waited for both of its deps
    assert default_jobs(1, cores=2) == 2 and default_jobs(2, cores=2) == 1 and default_jobs(0, cores=16) == 16


def test_failure_stops_dependants_only(tmp_path):
    stages = [_timed(tmp_path, "a", 0, fail=True), _timed(tmp_path, "b", 0, deps=["a"]),
              _timed(tmp_path, "c", 0, deps=["b"]), _timed(tmp_path, "d", 0.5), _timed(tmp_path, "e", 0, deps=["d"])]
    lines: list[str] = []
    with pytest.raises(StageFailed) as err:
        Runner(tmp_path, stages, {}, echo=lines.append, jobs=2).run([s.name for s in stages])
    msg = str(err.value)
    assert "stage a failed (exit 3)" in msg and "boom: this stage always fails" in msg
    assert "not run because of them: b, c" in msg
    state = {s["name"]: s["status"] for s in json.loads((tmp_path / "study.json").read_text())["stages"]}
    assert state == {"a": "failed", "b": "pending", "c": "pending", "d": "done", "e": "done"}
    assert (tmp_path / "runs" / "e" / DONE).is_file() and not (tmp_path / "runs" / "b").exists()
    assert "[b] not run: it needs a, which failed" in lines and "[c] not run: it needs a, which failed" in lines


def test_study_exits_nonzero_with_the_log_tail(tmp_path, monkeypatch, capsys):
    from echosynth.pipelines import study

    def graph(cfg, out):
        return [_timed(out, "data-x", 0), _timed(out, "bad", 0, fail=True, deps=["data-x"]), _timed(out, "ok", 0.2)]

    built = []
    monkeypatch.setattr(study, "build_graph", lambda cfg, out: built.append(out) or (graph(cfg, out), False))
    monkeypatch.setattr(study, "check_stages", lambda stages: len(stages))
    assert study.main(["--out", str(tmp_path)]) == 1
    assert len(built) == 1  # the split was there: the graph is built once
    err = capsys.readouterr().err
    assert "stage bad failed (exit 3)" in err and "boom: this stage always fails" in err
    assert (tmp_path / "runs" / "ok" / DONE).is_file()


# Like gen/sample.py: refuses a run dir whose RUN/flag.json says complete; resumes otherwise.
SAMPLER = r"""
import json, sys, pathlib
run = pathlib.Path(sys.argv[1]); run.mkdir(parents=True, exist_ok=True)
flag = run / "flag.json"
if flag.exists() and json.loads(flag.read_text())["complete"]:
    print("error: already complete; pass --overwrite"); sys.exit(1)
with open(run / "calls.jsonl", "a") as f:
    f.write("[]\n")
(run / "out.txt").write_text("samples")
flag.write_text(json.dumps({"complete": True}))
"""


def test_complete_but_unmarked_stage_is_finished_not_rerun(tmp_path):
    run = tmp_path / "runs" / "s"

    def stages():
        s = Stage("s", [sys.executable, "-c", SAMPLER, run], run, outputs=[run / "out.txt"], resume_args=[])
        s.done_flag = (run / "flag.json", "complete")
        return [s]

    assert Runner(tmp_path, stages(), {}, echo=lambda s: None).run(["s"]) == 1
    # Killed after the CLI finished but before the marker: the marker is gone, the started record stays.
    runner = Runner(tmp_path, stages(), {}, echo=lambda s: None)
    write_json(runner._started_path(runner.stages[0]), {"key": runner.key(runner.stages[0])})
    (run / DONE).unlink()
    lines: list[str] = []
    assert Runner(tmp_path, stages(), {}, echo=lines.append).run(["s"]) == 1
    assert "[s] had finished before the last run stopped: marking it done" in lines
    assert (run / DONE).is_file() and len(_calls(run)) == 1  # not run again
    # Interrupted before it finished (flag false): it resumes by being re-run.
    (run / DONE).unlink()
    (run / "flag.json").write_text(json.dumps({"complete": False}))
    write_json(runner._started_path(runner.stages[0]), {"key": runner.key(runner.stages[0])})
    assert Runner(tmp_path, stages(), {}, echo=lambda s: None).run(["s"]) == 1
    assert len(_calls(run)) == 2 and (run / DONE).is_file()


def test_sample_stages_declare_their_completion_flag(tmp_path):
    from echosynth.pipelines import study
    from echosynth.pipelines.graph import build_graph

    cfg = study.parse_config(study.StudyConfig, [])
    samples = [s for s in build_graph(cfg, tmp_path) if "gen/sample.py" in s.command]
    assert samples and all(s.done_flag == (s.run_dir / "sample.json", "complete") for s in samples)
    src = (Path(__file__).resolve().parent.parent / "gen" / "diffusion" / "synthesis.py").read_text()
    assert 'meta["complete"] = True' in src  # the flag the runner trusts is the sampler's last write


def test_report_stage_renders_the_final_state(tmp_path):
    # A stand-in report: copies study.json as it is while the report runs.
    copy = r"import shutil, sys, pathlib; pathlib.Path(sys.argv[2]).mkdir(parents=True, exist_ok=True); " \
           r"shutil.copy(sys.argv[1], pathlib.Path(sys.argv[2]) / 'seen.json')"
    rep = tmp_path / "report"
    stages = [_timed(tmp_path, "a", 0),
              Stage("report", [sys.executable, "-c", copy, tmp_path / "study.json", rep], rep,
                    outputs=[rep / "seen.json"], deps=["a"], experiment="report")]
    Runner(tmp_path, stages, {}, echo=lambda s: None).run(["a", "report"])
    seen = {s["name"]: s["status"] for s in json.loads((rep / "seen.json").read_text())["stages"]}
    assert seen == {"a": "done", "report": "done"}
    final = {s["name"]: s for s in json.loads((tmp_path / "study.json").read_text())["stages"]}
    assert final["report"]["status"] == "done" and final["report"]["seconds"] > 0


def test_command_goes_to_the_log_and_progress_line(tmp_path):
    import io

    from echosynth.pipelines.progress import Progress, fmt_seconds, load_history

    stages = [_timed(tmp_path, "a", 0.3), _timed(tmp_path, "b", 0.3, deps=["a"])]
    buf = io.StringIO()
    prog = Progress(["a", "b"], {}, 1, stream=buf, tty=False, every_s=0.0)
    Runner(tmp_path, stages, {}, echo=prog.echo, progress=prog).run(["a", "b"])
    out = buf.getvalue()
    assert "[a] started" in out and "[b] done in" in out
    assert "time.sleep" not in out and "time.sleep" in (tmp_path / "logs" / "a.log").read_text()
    assert re.search(r"study [01]/2 done · running [ab] \d+s · \d+s elapsed", out), out
    # The estimate: each remaining stage's last duration, spread over the slots.
    hist = load_history(tmp_path / "timings.jsonl")
    assert set(hist) == {"a", "b"} and all(0.3 <= v < 30 for v in hist.values())
    p = Progress(["a", "b", "c"], {"a": 10, "b": 20, "c": 30}, 1, stream=io.StringIO(), tty=False)
    p.finished("a")
    assert p.eta() == (50.0, 0) and "ETA 50s" in p.line() and "1/3 done" in p.line()
    p.slots = 2  # two at a time: the longest stage bounds it from below
    assert p.eta() == (30.0, 0)
    p.slots = 4
    p.history["d"], p.names = 40, p.names + ["d"]
    assert p.eta() == (40.0, 0)
    p.slots = 2
    assert p.eta() == (45.0, 0)  # (20 + 30 + 40) / 2
    p2 = Progress(["a", "x"], {"a": 10}, 1, stream=io.StringIO(), tty=False)
    assert p2.eta() == (10.0, 1) and "ETA >10s" in p2.line()
    assert "ETA" not in Progress(["x"], {}, 1, stream=io.StringIO(), tty=False).line()
    tty = io.StringIO()
    p3 = Progress(["a"], {}, 1, stream=tty, tty=True)
    p3.started("a")
    p3.echo("[a] done")
    assert tty.getvalue().startswith("\r\x1b[2Kstudy 0/1 done · running a") and "\r\x1b[2K[a] done\n" in tty.getvalue()
    assert fmt_seconds(3725) == "1h02m" and fmt_seconds(125) == "2m05s" and fmt_seconds(7.4) == "7s"


def test_log_tail_leaves_out_the_launcher_traceback(tmp_path):
    from echosynth.pipelines.stages import _tail

    log = tmp_path / "x.log"
    log.write_text("\n".join([
        "$ python -m accelerate.commands.launch gen/sample.py --run R",
        "sample.py: error: R/model.safetensors is truncated; re-train or pick another checkpoint",
        "Traceback (most recent call last):",
        '  File "/v/lib/python3.11/site-packages/accelerate/commands/launch.py", line 763, in simple_launcher',
        "    raise subprocess.CalledProcessError(returncode=process.returncode, cmd=cmd)",
        "subprocess.CalledProcessError: Command '['python', 'gen/sample.py']' returned non-zero exit status 2."]))
    tail = _tail(log)
    assert "model.safetensors is truncated" in tail and "CalledProcessError:" not in tail
    assert "traceback left out" in tail
    other = tmp_path / "y.log"  # a child's own traceback stays
    other.write_text("Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: bad\n")
    assert "ValueError: bad" in _tail(other) and "Traceback" in _tail(other)


@pytest.mark.parametrize("flags, stage, words", [
    (["--ddpm.sample.sampling_steps", "5000"], "sample-n200", ["5000 sampling steps exceed diffusion.num_timesteps 1000",
                                                      "ddpm.sample"]),
    (["--ddpm.sample.sampling_steps", "1000", "--ddpm.sample.sampler", "dpm++2m-sde"], "sample-n200",
     ["1000 sampling steps of dpm++2m-sde with linspace spacing repeat a timestep", "at most 999",
      "ddpm.sample.spacing: trailing"]),
    (["--classify.archs", "inception_v3", "--classify.train.image_size", "40"], "clf-real-n200-inception_v3",
     ["classify.train: image_size 40 is too small for inception_v3"]),
])
def test_dry_run_checks_every_stage_setting(tmp_path, capsys, flags, stage, words):
    from echosynth.pipelines import study

    assert study.main(["--out", str(tmp_path / "s"), "--dry-run", *flags]) == 2
    err = capsys.readouterr().err
    assert f"stage {stage}" in err and all(w in err for w in words), err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("yaml_text, words", [
    ("ddpm:\n  train: {lrr: 0.001}\n", ["unknown config key 'ddpm.train.lrr'", "Did you mean ddpm.train.lr"]),
    ("classify:\n  archs: [nosucharch]\n", ["classify.archs: 'nosucharch' is not one of"]),
    ("ddpm:\n  train_args: [lr=0.001, global_batch=8]\n",
     ["ddpm.train_args is gone", "write ddpm.train: {lr: 0.001, global_batch: 8}"]),
    ("evaluate:\n  judge_args: []\n", ["evaluate.judge_args is gone", "write evaluate.judge_train:"]),
    ("ddpm:\n  sample_steps: 50\n", ["ddpm.sample_steps is gone", "write ddpm.sample: {sampling_steps: 50}"]),
    ("ddpm:\n  train: {data: x.csv}\n", ["ddpm.train.data: the study sets data for each stage"]),
    ("evaluate:\n  fidelity: {gate: {min_class_ratio: 0.5}}\n", ["evaluate.fidelity.gate.min_class_ratio: the study"]),
])
def test_study_sections_are_checked_when_the_study_loads(tmp_path, capsys, yaml_text, words):
    """A typo, an old `*_args` list or a key the study sets itself is refused with its YAML path before anything runs."""
    from echosynth.pipelines import study

    (tmp_path / "s.yaml").write_text(yaml_text)
    with pytest.raises(SystemExit) as e:
        study.main(["--config", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "s"), "--dry-run"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and all(w in err for w in words), err
    assert not (tmp_path / "s").exists()


def test_sections_start_from_their_presets():
    """defaults -> preset -> the study's keys; the judge starts from classify.train."""
    from echosynth.pipelines import study

    cfg = study.parse_config(study.StudyConfig, ["--ddpm.train.lr", "0.0001", "--classify.preset",
                                                 "configs/classify/quick.yaml", "--classify.train.workers", "1",
                                                 "--evaluate.judge_train.lr", "0.01"])
    assert cfg.ddpm.train.lr == 0.0001 and cfg.ddpm.train.warmup_steps == 10  # the key, then the tiny preset
    assert cfg.ddpm.train.model.preset == "tiny"
    assert (cfg.classify.train.arch, cfg.classify.train.steps, cfg.classify.train.workers) == ("small_cnn", 300, 1)
    judge = cfg.evaluate.judge_train
    assert (judge.steps, judge.workers, judge.balance, judge.lr) == (300, 1, "sampler", 0.01)
    assert cfg.experiments.quality_train.task == "quality"  # from configs/classify/cactus.yaml


def test_stages_read_their_resolved_config_from_a_file(tmp_path):
    """A stage's command is its CLI with --config STUDY/configs/<stage>.json, which the runner writes as the
    stage starts; the stage's cache key follows the resolved config, not the command line."""
    from echosynth.gen.core.config import from_dict
    from echosynth.pipelines import study
    from echosynth.pipelines.graph import build_graph

    def ddpm(*flags):
        cfg = study.parse_config(study.StudyConfig, list(flags))
        stage = next(s for s in build_graph(cfg, tmp_path) if s.name == "ddpm-n200")
        stage.inputs, stage.deps = [], []  # no split here
        return stage

    stage, other = ddpm(), ddpm("--ddpm.train.lr", "0.5")
    assert stage.command[-3:] == ["gen/train.py", "--config", str(tmp_path / "configs" / "ddpm-n200.json")]
    assert stage.settings.run_dir == str(tmp_path / "runs" / "ddpm-n200") and stage.command == other.command
    runner = Runner(tmp_path, [stage], {}, echo=lambda s: None)
    assert runner.key(stage) != runner.key(other)
    job = runner._start(_NoExecutor(), stage, runner.key(stage), [])
    assert job.job_id == "1" and from_dict(type(stage.settings), json.loads(stage.config_file.read_text())) == stage.settings


class _NoExecutor:
    """Takes a submission and runs nothing."""

    slots, poll_s = 1, 0.01

    def submit(self, stage, cmd, env, log_path):
        from echosynth.pipelines.executor import Job

        return Job(stage.name, "1")


def test_check_registry_matches_the_scripts(tmp_path):
    """Every stage's settings are the config class its script parses."""
    from echosynth.pipelines import study
    from echosynth.pipelines.graph import build_graph

    repo = Path(__file__).resolve().parent.parent
    cfg = study.parse_config(study.StudyConfig, ["--experiments.quality", "true", "--experiments.training_time", "5"])
    for s in build_graph(cfg, tmp_path):
        if s.settings is not None:
            script = next(str(c) for c in s.command if str(c).endswith(".py"))
            assert f"parse_config({type(s.settings).__name__}," in (repo / script).read_text(), script


def test_every_stage_command_is_checked(tmp_path):
    from echosynth.pipelines import study
    from echosynth.pipelines.checks import check_stages
    from echosynth.pipelines.graph import build_graph

    cfg = study.parse_config(study.StudyConfig, ["--experiments.ablation", "true", "--experiments.sample_size", "10,20",
                                                 "--experiments.training_time", "5,10", "--experiments.quality", "true"])
    stages = build_graph(cfg, tmp_path)
    unchecked = [s.name for s in stages if s.settings is None and s.name != "report"]
    assert unchecked == [], f"give these stages typed settings: {unchecked}"
    assert check_stages(stages) == len(stages) - 1


def test_dry_run_shows_waves_and_checks(tmp_path, capsys):
    from echosynth.pipelines import study

    assert study.main(["--out", str(tmp_path / "s"), "--dry-run", "--jobs", "3"]) == 0
    out = capsys.readouterr().out
    assert "settings of" in out and "checked by their CLIs' config checks" in out and "3 at a time" in out
    waves = re.findall(r"# wave (\d+)", out)
    assert waves[:3] == ["1", "2", "3"]
    wave3 = out.split("# wave 3")[1].split("# wave 4")[0]
    assert "[ddpm-n200]" in wave3 and "[clf-real-n200-vgg16]" in wave3  # both need only the split


def test_a_multi_slot_stage_runs_alone(tmp_path):
    """A stage that takes both slots (e.g. a two-thread DDPM) never overlaps another; smaller ready stages
    fill the slots before it instead of waiting."""
    big = _timed(tmp_path, "big", 1.0)
    big.slots = 2
    stages = [_timed(tmp_path, "a", 1.0), big, _timed(tmp_path, "b", 1.0)]
    assert Runner(tmp_path, stages, {}, echo=lambda s: None, jobs=2).run(["a", "big", "b"]) == 3
    (a0, a1), (g0, g1), (b0, b1) = (json.loads((tmp_path / "runs" / n / "times.json").read_text()) for n in ("a", "big", "b"))
    assert a0 < b1 and b0 < a1, "a and b (one slot each) should share the two slots"
    assert g0 >= max(a1, b1) or g1 <= min(a0, b0), "the two-slot stage overlapped another stage"
