"""How the scripts cooperate with `accelerate launch`: the launcher's precision, graceful Ctrl-C, the resume command.

No torch at import time: gen/train.py and classify/train.py use these before the heavy imports.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import stat
import sys
from pathlib import Path

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as a shell reports it


# ----------------------------------------------------------------------------------------------
# Mixed precision: the script's `auto` applies only when the launcher and accelerate's config say nothing;
# `auto` is bf16 on CUDA with bf16 and on CPUs with native bf16 (AMX or AVX512-BF16), fp32 elsewhere.


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _launcher() -> tuple[int, list[str]] | None:
    """(pid, command line) of the `accelerate launch` parent (or grandparent) process, None if there is none."""
    pid = os.getppid()
    for _ in range(3):  # the launcher, or torch elastic's agent inside it
        cmd = _cmdline(pid)
        if any(tok.endswith("accelerate") or tok.endswith("accelerate.commands.launch") for tok in cmd[:3]):
            return pid, cmd
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
    return None


def launcher_cmdline() -> list[str]:
    """The `accelerate launch …` command line of the parent (or grandparent) process, [] if there is none."""
    found = _launcher()
    return found[1] if found else []


def _flag_value(cmd: list[str], flag: str) -> str | None:
    for i, tok in enumerate(cmd):
        if tok == flag and i + 1 < len(cmd):
            return cmd[i + 1]
        if tok.startswith(flag + "="):
            return tok.split("=", 1)[1]
    return None


def launcher_precision() -> tuple[str, str] | None:
    """(precision, where it came from) when `accelerate launch --mixed_precision` or an accelerate config file sets it."""
    env = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if env is None:
        return None  # not under accelerate launch
    cmd = launcher_cmdline()
    if not cmd:  # cannot see the launcher (not Linux): trust a mixed precision it passed, not its default "no"
        return (env, "accelerate launch") if env != "no" else None
    script = sys.argv[0]
    launcher_args = cmd[: cmd.index(script)] if script in cmd else cmd
    if _flag_value(launcher_args, "--mixed_precision") is not None:
        return env, "accelerate launch --mixed_precision"
    config = _flag_value(launcher_args, "--config_file")
    if config is None:
        try:
            from accelerate.commands.config.config_args import default_config_file
        except ImportError:
            return None
        config = default_config_file
    path = Path(config).expanduser()
    if path.is_file():
        import yaml

        try:
            data = yaml.safe_load(path.read_text()) if path.suffix != ".json" else json.loads(path.read_text())
        except Exception:  # an unreadable accelerate config is accelerate's to report
            data = None
        if isinstance(data, dict) and data.get("mixed_precision") not in (None, ""):
            return env, f"accelerate config {path}"
    return None  # the launcher's default, not a choice


CPUINFO = Path("/proc/cpuinfo")
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # CPU flags of bf16 matrix / dot-product instructions


def cpu_flags(cpuinfo: str | os.PathLike | None = None) -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo's first `flags` line (empty where there is none, as off Linux)."""
    try:
        for line in Path(cpuinfo or CPUINFO).read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_native_bf16(cpuinfo: str | os.PathLike | None = None) -> str | None:
    """The flag that makes bf16 native on this CPU (amx_bf16 or avx512_bf16), None if neither is reported."""
    flags = cpu_flags(cpuinfo)
    return next((f for f in NATIVE_BF16_FLAGS if f in flags), None)


def auto_precision(cuda: bool, bf16_ok: bool, cpu_bf16: str | None) -> tuple[str, str]:
    """(precision, why) of `auto`: bf16 where the hardware runs it natively, fp32 elsewhere."""
    if cuda:
        return ("bf16", "auto: bf16 on CUDA") if bf16_ok else ("no", "auto: fp32, no bf16 on this GPU")
    if cpu_bf16:
        return "bf16", f"auto: bf16 on a CPU with native bf16 ({cpu_bf16})"
    return "no", "auto: fp32 on a CPU without native bf16 (no amx_bf16 or avx512_bf16 flag)"


def resolve_precision(requested: str, cuda: bool, bf16_ok: bool, cpu_bf16: str | None | bool = True) -> tuple[str, str]:
    """(precision to use, where it came from): an explicit script value, else the launcher's, else auto.

    `cpu_bf16` is the flag that makes bf16 native on this CPU; True (the default) reads /proc/cpuinfo.
    """
    launched = launcher_precision()
    if requested != "auto":
        note = f"; overrides {launched[1]} {launched[0]}" if launched and launched[0] != requested else ""
        return requested, f"--mixed_precision {requested}{note}"
    if launched is not None:
        return launched[0], launched[1]
    if cpu_bf16 is True:
        cpu_bf16 = None if cuda else cpu_native_bf16()
    return auto_precision(cuda, bf16_ok, cpu_bf16 or None)


# ----------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM: finish the step, checkpoint, say how to continue


_ACTIVE: list[GracefulStop] = []  # signal handlers are process-wide, and so is the stop request they record


def active_stop() -> GracefulStop | None:
    """The innermost GracefulStop in force in this process, for loops deep in library code to poll."""
    return _ACTIVE[-1] if _ACTIVE else None


class GracefulStop:
    """Turn the first SIGINT/SIGTERM into a request the loop polls (`signum`); a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0":
            print(f"\n{signal.Signals(signum).name}: stopping after this step (Ctrl-C again to abort without a checkpoint)",
                  file=sys.stderr, flush=True)

    def __enter__(self) -> GracefulStop:
        for s in EXIT_CODES:
            self._old[s] = signal.signal(s, self._handle)
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.remove(self)
        for s, h in self._old.items():
            signal.signal(s, h)

    @property
    def exit_code(self) -> int:
        """130 after SIGINT, 143 after SIGTERM, 0 if no signal came."""
        return EXIT_CODES.get(self.signum, 0)


class Interrupted(Exception):
    """Training stopped on a signal after writing a checkpoint; `exit_code` is 130 or 143."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _norm(flag: str) -> str:
    return "--" + flag.split("=", 1)[0].lstrip("-").replace("-", "_")


def resume_command(extra: dict[str, str], drop: tuple[str, ...] = ("--resume", "--overwrite"),
                   bool_flags: tuple[str, ...] = ("--overwrite",)) -> str:
    """This script's command line again (under the same launcher), without `drop` flags and with `extra` flags set."""
    gone = {_norm(d) for d in (*drop, *extra)}
    bools = {_norm(b) for b in bool_flags}
    argv, args, i = sys.argv[1:], [], 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if not tok.startswith("--") or _norm(tok) not in gone:
            args.append(tok)
            continue
        if "=" in tok:
            continue
        takes_value = _norm(tok) not in bools or (i < len(argv) and argv[i].lower() in ("true", "false", "1", "0", "yes", "no"))
        if takes_value and i < len(argv):
            i += 1
    for k, v in extra.items():
        args += [k, v]
    cmd = launcher_cmdline()
    script = sys.argv[0]
    if cmd and script in cmd:
        launch = cmd[: cmd.index(script)]
        at = next((j for j, t in enumerate(launch) if t.endswith("launch")), None)
        prefix = ["accelerate", "launch", *launch[at + 1:]] if at is not None else launch
    else:
        prefix = ["python"]
    return shlex.join([*prefix, script, *args])


# ----------------------------------------------------------------------------------------------
# Progress bars: drawn when a person watches, never written into a log file or pipe

PROGRESS_ENV = "ECHOSYNTH_PROGRESS"  # 1/0 forces bars on/off, whatever the streams are


def _is_terminal_path(path: str) -> bool:
    """True if `path` (a /proc/PID/fd/N link) opens onto a terminal."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return os.isatty(fd)
    finally:
        os.close(fd)


def _is_pipe(stream) -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(stream.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):
        return False


def progress_wanted(stream=None) -> bool:
    """Whether to draw progress bars on `stream` (stderr): True when a terminal shows it, directly or through a launcher.

    accelerate ≥ 1.16 pipes the script's stderr through the launcher, which copies it to its own stderr, so
    `isatty()` is False under `accelerate launch` on a terminal. A pipe read by an `accelerate launch`
    ancestor counts as a terminal when that launcher's own stderr is one. A file, a pipe into `tee` or a
    log, Slurm's output file and a study's stage log are not: there the periodic one-line summaries are
    enough. ECHOSYNTH_PROGRESS=1 or 0 overrides the decision.
    """
    forced = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    stream = sys.stderr if stream is None else stream
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):
        return False
    if not _is_pipe(stream):
        return False
    found = _launcher()
    return found is not None and _is_terminal_path(f"/proc/{found[0]}/fd/2")
