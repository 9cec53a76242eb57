"""The study runner on stand-in stages (plain `python -c` commands): caching, staleness, resume,
failure with the log tail, stage selection, and the study config / graph."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pipelines.stages import DONE, Runner, Stage, StageFailed, select

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
    from pipelines import study
    from pipelines.graph import build_graph

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
