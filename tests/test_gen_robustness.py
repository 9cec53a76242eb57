"""Hostile input and interrupts for gen/train.py and gen/sample.py: nan/inf refused, divergence stops training,
damaged checkpoints skipped with a warning, stale temp dirs removed, Ctrl-C checkpoints and resumes exactly,
the launcher's precision respected."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import PYTHON, REPO, accelerate_cmd, run_cli
from echosynth.gen.core.checkpoint import (
    CheckpointError,
    clean_stale_temp,
    latest_intact,
    list_checkpoints,
    load_checkpoint,
    nonfinite_keys,
    save_checkpoint,
    verify_safetensors,
)
from echosynth.gen.core.config import build, to_dict
from echosynth.gen.core.io import read_jsonl, write_json
from echosynth.gen.core.launcher import resolve_precision, resume_command
from echosynth.gen.diffusion.ema import EMA
from echosynth.gen.diffusion.loop import resolve_resume
from echosynth.gen.diffusion.settings import DiffusionConfig, TrainConfig
from echosynth.gen.diffusion.trained import load_run
from echosynth.gen.diffusion.unet import ClassUNet, ModelConfig
from echosynth.gen.sample import main as sample_main
from echosynth.gen.train import main as train_main

ENV = {"OMP_NUM_THREADS": "1"}
STEPS = 24
CLASSES = ["A2C", "A4C", "PSAX"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def train_args(split_dir, run_dir, steps=STEPS, *extra):
    return ["--config", "configs/gen/tiny.yaml", "--data", str(split_dir / "train.csv"), "--run_dir", str(run_dir),
            "--model.image_size", "16", "--diffusion.num_timesteps", "100", "--steps", str(steps),
            "--global_batch", "8", "--lr", "0.001", "--log_every", "1", "--checkpoint_every", "8", "--keep_last", "5",
            "--sample_per_class", "0", "--ema_decay", "0.9", *extra]


@pytest.fixture(scope="module")
def base(split_dir, tmp_path_factory):
    """An uninterrupted 24-step run with checkpoints at 8, 16, 24 (one process, no launcher)."""
    run = tmp_path_factory.mktemp("robust") / "base"
    run_cli([PYTHON, "gen/train.py", *train_args(split_dir, run)], env=ENV)
    return run


def ema_at(run, step):
    return load_file(str(run / "checkpoints" / f"step-{step:07d}" / "ema.safetensors"))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def fake_run(root, steps=(1, 2), nan_at=None):
    """A run directory with random-weight checkpoints at `steps` (the EMA of `nan_at` filled with nan)."""
    cfg = TrainConfig(data="x.csv", model=ModelConfig("tiny", 16), diffusion=DiffusionConfig(num_timesteps=100))
    run = root / "fake"
    run.mkdir(parents=True)
    write_json(run / "config.json", to_dict(cfg))
    write_json(run / "classes.json", CLASSES)
    torch.manual_seed(0)
    m = ClassUNet("tiny", 16, len(CLASSES), True)
    opt = torch.optim.AdamW(m.parameters())
    for s in steps:
        ema = EMA(m).state_dict()
        if s == nan_at:
            ema = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in ema.items()}
        save_checkpoint(run, s, model=m.state_dict(), ema=ema, optimizer=opt.state_dict(), scheduler={}, state={})
    return run


DAMAGE = {
    "empty": lambda p: p.write_bytes(b""),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "garbage": lambda p: p.write_bytes(os.urandom(4096)),
    "short header": lambda p: p.write_bytes(b"\x05\x00"),
}


# ----------------------------------------------------------------------------------------------
# nan and inf


@pytest.mark.parametrize("key", ["ema_decay", "lr", "cfg_dropout", "grad_clip", "diffusion.lambda_vlb", "weight_decay"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_training_values_are_refused_naming_the_key(key, value, capsys):
    with pytest.raises(SystemExit) as e:
        train_main(["--data", "x.csv", f"--{key}", value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{key}: " in err and "not a finite number" in err


@pytest.mark.parametrize("key", ["guidance", "eta"])
def test_non_finite_sampling_values_are_refused(key, capsys):
    with pytest.raises(SystemExit) as e:
        sample_main(["--run", "r", "--out", "o", "--per_class", "1", f"--{key}", "nan"])
    assert e.value.code == 2 and f"{key}: nan is not a finite number" in capsys.readouterr().err


def test_a_diverging_run_stops_naming_the_step_without_a_nan_checkpoint(split_dir, tmp_path):
    run = tmp_path / "diverge"
    args = train_args(split_dir, run, 6, "--lr", "1e30", "--checkpoint_every", "1", "--warmup_steps", "0")
    proc = run_cli([PYTHON, "gen/train.py", *args], check=False, env=ENV)
    assert proc.returncode == 2, proc.stderr
    assert "train.py: error: step " in proc.stderr and "without writing a checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr
    steps = list_checkpoints(run)
    assert len(steps) < 6  # stopped early
    failed_at = int(proc.stderr.split("error: step ")[1].split(":")[0])
    assert failed_at not in steps and all(s < failed_at for s in steps)
    for s in steps:  # whatever was written is finite
        c = load_checkpoint(run / "checkpoints" / f"step-{s:07d}")
        assert not nonfinite_keys(c["model"]) and not nonfinite_keys(c["ema"])


def test_sampling_refuses_nan_weights_naming_the_file(tmp_path, capsys):
    run = fake_run(tmp_path, steps=(1, 2), nan_at=2)
    with pytest.raises(CheckpointError, match=r"step-0000002/ema.safetensors: \d+ tensor\(s\) hold nan"):
        load_run(run)
    assert load_run(run, "model").step == 2  # the raw weights of that step are fine
    assert load_run(run, step=1).step == 1
    code = sample_main(["--run", str(run), "--out", str(tmp_path / "s"), "--per_class", "1", "--sampling_steps", "2"])
    assert code == 2 and "ema.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "s" / "samples.npz").exists()


# ----------------------------------------------------------------------------------------------
# Damaged checkpoints and stale temp dirs


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_weights_are_named_and_skipped(kind, tmp_path, capsys):
    run = fake_run(tmp_path, steps=(1, 2, 3))
    bad = run / "checkpoints" / "step-0000003" / "ema.safetensors"
    DAMAGE[kind](bad)
    with pytest.raises(CheckpointError, match=str(bad)):
        verify_safetensors(bad)
    loaded = load_run(run)  # sampling's loader: warns and takes step 2
    err = capsys.readouterr().err
    assert loaded.step == 2 and f"warning: {bad}" in err and "falling back to the previous checkpoint, step 2" in err
    assert load_run(run, "model").step == 3  # only the damaged file's checkpoint is skipped for it
    with pytest.raises(CheckpointError, match=str(bad)):
        load_run(run, step=3)  # an explicit step is not silently replaced
    cfg = build(TrainConfig, overrides={"data": "x.csv", "run_dir": str(run), "resume": "latest"})
    assert resolve_resume(cfg)[1].name == "step-0000002"  # --resume latest falls back too
    assert "warning:" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=str(bad)):
        load_checkpoint(bad.parent)


def test_every_checkpoint_damaged_is_a_clear_error(tmp_path, capsys):
    run = fake_run(tmp_path, steps=(1,))
    (run / "checkpoints" / "step-0000001" / "model.safetensors").write_bytes(b"garbage")
    assert latest_intact(run) is None
    with pytest.raises(CheckpointError, match="every checkpoint"):
        resolve_resume(build(TrainConfig, overrides={"data": "x.csv", "run_dir": str(run), "resume": "latest"}))
    (run / "config.json").write_text("[1, 2]")  # valid JSON, not a config
    with pytest.raises(ValueError, match="config.json: expected a mapping"):
        load_run(run, "ema")


def test_resume_skips_a_damaged_latest_checkpoint_and_cleans_stale_temp_dirs(base, split_dir, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(base, b)
    bad = b / "checkpoints" / "step-0000024" / "model.safetensors"
    DAMAGE["truncated"](bad)
    stale = b / "checkpoints" / ".step-0000024.1a2b3c"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half a file")
    proc = run_cli([PYTHON, "gen/train.py", *train_args(split_dir, b, STEPS, "--resume", "latest")], env=ENV)
    assert f"warning: {bad}" in proc.stderr and "step 16" in proc.stderr
    log = (b / "log.txt").read_text()
    assert "resumed from" in log and "step-0000016 (step 16)" in log and ".step-0000024.1a2b3c" in log
    assert not stale.exists()
    assert_same_weights(ema_at(base, 24), ema_at(b, 24))  # retraced 17..24 exactly and rewrote the damaged one


def test_clean_stale_temp_removes_only_hidden_step_dirs(tmp_path):
    ck = tmp_path / "checkpoints"
    (ck / ".step-0000005.abcd").mkdir(parents=True)
    (ck / "step-0000004").mkdir()
    (ck / "notes").mkdir()
    assert [p.name for p in clean_stale_temp(tmp_path)] == [".step-0000005.abcd"]
    assert sorted(p.name for p in ck.iterdir()) == ["notes", "step-0000004"]


# ----------------------------------------------------------------------------------------------
# Interrupts


def _wait_for_steps(run, n, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        stats = run / "stats.jsonl"
        if stats.exists() and len(read_jsonl(stats)) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended before the signal: {proc.communicate()}")
        time.sleep(0.2)
    raise AssertionError("training made no progress")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)])
def test_a_signal_checkpoints_prints_the_resume_command_and_resume_matches(sig, code, base, split_dir, tmp_path):
    run = tmp_path / "int"
    cmd = [PYTHON, "gen/train.py", *train_args(split_dir, run)]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    _wait_for_steps(run, 3, proc)
    os.killpg(proc.pid, sig)  # the whole group, as a terminal's Ctrl-C does
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    lines = [ln for ln in err.splitlines() if "continue with:" in ln]
    assert len(lines) == 1, err
    stopped = int(lines[0].split("stopped after step ")[1].split(",")[0])
    assert 3 <= stopped < STEPS and stopped in list_checkpoints(run)
    resume = shlex.split(lines[0].split("continue with: ")[1])
    assert resume[:2] == ["python", "gen/train.py"] and resume[-4:] == ["--run_dir", str(run), "--resume", "latest"]
    run_cli([PYTHON, *resume[1:]], env=ENV)
    assert_same_weights(ema_at(base, STEPS), ema_at(run, STEPS))
    la = {r["step"]: r["loss"] for r in read_jsonl(base / "stats.jsonl")}
    lb = {r["step"]: r["loss"] for r in read_jsonl(run / "stats.jsonl")}
    assert sorted(lb) == list(range(1, STEPS + 1))
    assert all(lb[s] == pytest.approx(la[s], rel=1e-5) for s in la)


def test_resume_command_rewrites_the_run_flags(monkeypatch):
    monkeypatch.setattr("sys.argv", ["gen/train.py", "--data", "a b.csv", "--overwrite", "--resume=x", "--steps", "5",
                                     "--run-dir", "old", "--overwrite", "true"])
    monkeypatch.setattr("echosynth.gen.core.launcher.launcher_cmdline", lambda: [])
    cmd = resume_command({"--run_dir": "runs/00001-x", "--resume": "latest"})
    assert shlex.split(cmd) == ["python", "gen/train.py", "--data", "a b.csv", "--steps", "5",
                                "--run_dir", "runs/00001-x", "--resume", "latest"]
    monkeypatch.setattr("echosynth.gen.core.launcher.launcher_cmdline", lambda: ["/v/bin/python", "/v/bin/accelerate", "launch",
                                                                  "--num_processes", "2", "gen/train.py", "--data", "a b.csv"])
    assert resume_command({}).startswith("accelerate launch --num_processes 2 gen/train.py --data 'a b.csv'")


# ----------------------------------------------------------------------------------------------
# The launcher's precision


def test_precision_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert resolve_precision("auto", cuda=False, bf16_ok=False, cpu_bf16=None)[0] == "no"  # more in test_precision.py
    assert resolve_precision("auto", cuda=True, bf16_ok=True) == ("bf16", "auto: bf16 on CUDA")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    launch = ["python", "-m", "accelerate.commands.launch", "--num_processes", "1"]
    monkeypatch.setattr("sys.argv", ["gen/train.py"])
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no accelerate config file
    monkeypatch.setattr("echosynth.gen.core.launcher.launcher_cmdline", lambda: [*launch, "gen/train.py"])
    monkeypatch.setattr("accelerate.commands.config.config_args.default_config_file", str(tmp_path / "none.yaml"))
    assert resolve_precision("auto", cuda=True, bf16_ok=True)[0] == "bf16"  # the launcher's default "no" is no choice
    monkeypatch.setattr("echosynth.gen.core.launcher.launcher_cmdline", lambda: [*launch, "--mixed_precision", "no", "gen/train.py"])
    assert resolve_precision("auto", cuda=True, bf16_ok=True) == ("no", "accelerate launch --mixed_precision")
    cfg_file = tmp_path / "acc.yaml"
    cfg_file.write_text("mixed_precision: fp16\n")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    monkeypatch.setattr("echosynth.gen.core.launcher.launcher_cmdline", lambda: [*launch, "--config_file", str(cfg_file), "gen/train.py"])
    assert resolve_precision("auto", cuda=True, bf16_ok=True) == ("fp16", f"accelerate config {cfg_file}")
    mp, where = resolve_precision("no", cuda=True, bf16_ok=True)  # an explicit script value wins, and says so
    assert mp == "no" and "overrides accelerate config" in where


def test_accelerate_launch_bf16_is_used_and_logged_with_a_terminal(split_dir, tmp_path):
    import fcntl
    import pty
    import struct
    import termios
    import threading

    run = tmp_path / "bf16"
    cmd = accelerate_cmd("gen/train.py", 1)
    cmd[cmd.index("--mixed_precision") + 1] = "bf16"
    master, slave = pty.openpty()  # stderr is a terminal: the progress bar is drawn there
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # 80 columns, or tqdm draws nothing
    screen = []
    reader = threading.Thread(target=lambda: screen.extend(iter(lambda: _read(master), b"")), daemon=True)
    reader.start()
    proc = subprocess.run(cmd + train_args(split_dir, run, 2), cwd=REPO, stdout=subprocess.PIPE, stderr=slave,
                          env={**os.environ, **ENV, "HF_HOME": str(tmp_path / "hf")}, timeout=600)
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    assert proc.returncode == 0, b"".join(screen)[-3000:]
    assert b"train:" in b"".join(screen)  # tqdm's bar went to the terminal
    log = (run / "log.txt").read_text()
    assert "precision bf16 (accelerate launch --mixed_precision)" in log
    assert json.loads((run / "config.json").read_text())["mixed_precision"] == "auto"
    assert [r["step"] for r in read_jsonl(run / "stats.jsonl")] == [1, 2]
    assert "step 1: loss" in log and "step 2: loss" in log  # loss lines reach log.txt also on a terminal
    assert "step 2: loss" not in proc.stdout.decode()  # … and the screen shows the bar instead


def _read(fd):
    try:
        return os.read(fd, 4096)
    except OSError:  # the other end closed
        return b""


@pytest.mark.parametrize("content", [b"\x89PNG garbage", b"", b'"just a string"'])
def test_a_garbage_config_json_is_one_clear_error(content, tmp_path, capsys):
    from echosynth.gen.diffusion.loop import check_resume_compatible

    run = fake_run(tmp_path)
    (run / "config.json").write_bytes(content)
    code = sample_main(["--run", str(run), "--out", str(tmp_path / "s"), "--per_class", "1", "--sampling_steps", "2"])
    err = capsys.readouterr().err
    assert code == 2 and f"{run / 'config.json'}: " in err and "Traceback" not in err
    with pytest.raises(ValueError, match="config.json"):
        check_resume_compatible(run, {}, CLASSES)
