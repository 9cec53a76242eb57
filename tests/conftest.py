"""Shared fixtures: a tiny phantom dataset and its patient splits, built once per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ARTIFACTS = REPO / "test-artifacts"  # screenshots and reports worth keeping from a test run

# Small on purpose: 32 px renders in ~1 ms and a split of 320 images keeps every class in
# every split while the whole suite stays quick on two cores.
TINY_N = 320
TINY_SIZE = 32


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module: OpenMP's spinning threads slow tiny
    convolutions 10-50x on a busy 2-core machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """A 320-image phantom dataset at 32×32 (manifest.csv + images/)."""
    from echosynth.gen.data.build import build_phantom

    out = tmp_path_factory.mktemp("phantom") / "data"
    build_phantom(out, n=TINY_N, size=TINY_SIZE, seed=0, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def split_dir(phantom_dir, tmp_path_factory) -> Path:
    """Patient splits of `phantom_dir` with nested subsets of 60 and 120 training images."""
    from echosynth.gen.data.build import build_splits

    out = tmp_path_factory.mktemp("split") / "split"
    build_splits(phantom_dir / "manifest.csv", out, subsets=[60, 120], seed=0)
    return out


def interrupt_after_first_stats(args: list[str], stats: Path, env: dict | None = None) -> tuple[int, str]:
    """Run a command from the repo root in its own session and send its process group SIGINT once `stats`
    (a stats.jsonl) holds a line; return (exit code, stderr)."""
    import signal
    import time

    proc = subprocess.Popen(args, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    t0 = time.time()
    while not (stats.is_file() and stats.read_text().count("\n") >= 1):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < 300
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def run_cli(args: list[str], cwd: Path = REPO, timeout: int = 600, env: dict | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    """Run a command (e.g. [PYTHON, 'gen/prepare.py', ...]) from the repo root and capture output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def accelerate_cmd(script: str, num_processes: int = 1) -> list[str]:
    """`accelerate launch` on CPU with N gloo processes, for a repo script."""
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--num_processes", str(num_processes)]
    if num_processes > 1:
        cmd.append("--multi_gpu")
    return cmd + [script]


NO_BROWSER_ENV = "ECHOSYNTH_NO_BROWSER"
NO_BROWSER = ("chromium is not installed: `make test` installs Debian's chromium (as root, saying so first), or "
              f"run `apt-get install chromium`; {NO_BROWSER_ENV}=1 skips the browser tests")


def pytest_collection_modifyitems(config, items):
    """Browser tests (marked `browser`, or named *chromium* / *browser*) carry the marker; skipped on request."""
    skip = pytest.mark.skip(reason=f"{NO_BROWSER_ENV} is set: browser tests skipped")
    for item in items:
        if "chromium" in item.name or "browser" in item.name:
            item.add_marker(pytest.mark.browser)
        if os.environ.get(NO_BROWSER_ENV) and item.get_closest_marker("browser"):
            item.add_marker(skip)


def chromium_path() -> str | None:
    """Debian's chromium if installed, else None. Tests never install it themselves: `make test` does, out loud."""
    if os.environ.get(NO_BROWSER_ENV):
        return None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_screenshot(url: str, png: Path, width: int = 1280, height: int = 2000, timeout: int = 120) -> None:
    """Headless Chromium screenshot of a URL (file:// or http://localhost) into `png`."""
    exe = chromium_path()
    if exe is None:
        pytest.skip(NO_BROWSER)
    png.parent.mkdir(parents=True, exist_ok=True)
    profile = png.parent / f".chromium-profile-{png.stem}"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", f"--window-size={width},{height}", "--virtual-time-budget=10000",
           f"--screenshot={png}", url]
    subprocess.run(cmd, capture_output=True, timeout=timeout)
    shutil.rmtree(profile, ignore_errors=True)
    assert png.is_file() and png.stat().st_size > 0, f"chromium wrote no screenshot for {url}"
