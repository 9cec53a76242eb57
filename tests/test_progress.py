"""Progress bars show when a person watches (a terminal, directly or through a launcher's pipe) and never
write bar frames into a file or a pipe nobody watches (a log, a Slurm output file, a study's stage log)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap
import threading

import pytest

from conftest import PYTHON, REPO, accelerate_cmd
from echosynth.gen.core.launcher import PROGRESS_ENV, progress_wanted

CHILD = "import sys; from echosynth.gen.core.launcher import progress_wanted; print(progress_wanted(), file=sys.stderr)"


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != PROGRESS_ENV}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


def _terminal():
    """A pseudo-terminal of 80 columns: (master, slave, reader thread, captured chunks)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    screen: list[bytes] = []

    def read():
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                return
            if not chunk:
                return
            screen.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return master, slave, reader, screen


def _close(master, slave, reader):
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)


def test_decision_for_plain_streams(tmp_path, monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    with open(tmp_path / "log.txt", "w") as f:
        assert progress_wanted(f) is False  # a file
    r, w = os.pipe()
    with os.fdopen(w, "w") as f:
        assert progress_wanted(f) is False  # a pipe with no launcher behind it (pytest is no launcher)
    os.close(r)
    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as f:
        assert progress_wanted(f) is True  # a terminal
    os.close(master)
    with open(tmp_path / "log.txt", "w") as f:
        monkeypatch.setenv(PROGRESS_ENV, "1")
        assert progress_wanted(f) is True
    monkeypatch.setenv(PROGRESS_ENV, "0")
    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as f:
        assert progress_wanted(f) is False
    os.close(master)


def _fake_launcher(tmp_path):
    """An `accelerate` executable that runs CHILD with stderr piped through itself, as accelerate 1.16 does."""
    exe = tmp_path / "bin" / "accelerate"
    exe.parent.mkdir()
    exe.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import subprocess, sys
        p = subprocess.Popen([sys.executable, "-c", {CHILD!r}], stderr=subprocess.PIPE)
        sys.stderr.buffer.write(p.stderr.read()); sys.stderr.flush()
        sys.exit(p.wait())
        """))
    exe.chmod(0o755)
    return exe


@pytest.mark.parametrize("behind", ["terminal", "file", "pipe"])
def test_a_launchers_pipe_counts_as_what_is_behind_the_launcher(behind, tmp_path):
    exe = _fake_launcher(tmp_path)
    if behind == "terminal":
        master, slave, reader, screen = _terminal()
        proc = subprocess.run([str(exe), "launch"], stderr=slave, env=_env(), timeout=120)
        _close(master, slave, reader)
        out = b"".join(screen).decode()
    elif behind == "file":
        with open(tmp_path / "log.txt", "w") as f:
            proc = subprocess.run([str(exe), "launch"], stderr=f, env=_env(), timeout=120)
        out = (tmp_path / "log.txt").read_text()
    else:
        proc = subprocess.run([str(exe), "launch"], stderr=subprocess.PIPE, env=_env(), timeout=120)
        out = proc.stderr.decode()
    assert proc.returncode == 0, out
    assert out.strip() == ("True" if behind == "terminal" else "False")


def test_accelerate_launch_redirected_to_a_file_writes_loss_lines_and_no_bar(split_dir, tmp_path):
    run = tmp_path / "run"
    log = tmp_path / "stage.log"
    args = ["--config", "configs/gen/tiny.yaml", "--data", str(split_dir / "train.csv"), "--run_dir", str(run),
            "--model.image_size", "16", "--diffusion.num_timesteps", "100", "--steps", "3", "--global_batch", "8",
            "--log_every", "1", "--checkpoint_every", "3", "--sample_per_class", "0"]
    with open(log, "wb") as f:
        proc = subprocess.run(accelerate_cmd("gen/train.py", 1) + args, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                              env=_env(HF_HOME=str(tmp_path / "hf")), timeout=600)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "step 3: loss" in text  # the one-line summaries
    assert "\r" not in text and "train:" not in text  # no bar frames


def test_classifier_redirected_to_a_file_writes_epoch_lines_and_no_bar(split_dir, tmp_path):
    log = tmp_path / "classify.log"
    cmd = [PYTHON, "classify/train.py", "--config", "configs/classify/quick.yaml", "--epochs", "2", "--threads", "1",
           "--train", f"real:{split_dir / 'train.csv'}", "--val", str(split_dir / "val.csv"),
           "--out", str(tmp_path / "runs")]
    with open(log, "wb") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=_env(), timeout=600)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "seed 0 view epoch 2: loss" in text  # progress is on (the default): the one-line summaries stay
    assert "\r" not in text and "it/s" not in text and "%|" not in text  # … and no bar frames
