"""How the scripts cooperate with `accelerate launch`: the launcher's precision, graceful Ctrl-C, the resume command.

No torch at import time: gen/train.py and classify/train.py use these before the heavy imports.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from pathlib import Path

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as a shell reports it


# ----------------------------------------------------------------------------------------------
# Mixed precision: the script's `auto` applies only when the launcher and accelerate's config say nothing


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def launcher_cmdline() -> list[str]:
    """The `accelerate launch …` command line of the parent (or grandparent) process, [] if there is none."""
    pid = os.getppid()
    for _ in range(3):  # the launcher, or torch elastic's agent inside it
        cmd = _cmdline(pid)
        if any(tok.endswith("accelerate") or tok.endswith("accelerate.commands.launch") for tok in cmd[:3]):
            return cmd
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return []
    return []


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
            data = yaml.safe_load(path.read_text()) if path.suffix != ".json" else __import__("json").loads(path.read_text())
        except Exception:  # an unreadable accelerate config is accelerate's to report
            data = None
        if isinstance(data, dict) and data.get("mixed_precision") not in (None, ""):
            return env, f"accelerate config {path}"
    return None  # the launcher's default, not a choice


def resolve_precision(requested: str, cuda: bool, bf16_ok: bool) -> tuple[str, str]:
    """(precision to use, where it came from): an explicit script value, else the launcher's, else auto."""
    launched = launcher_precision()
    if requested != "auto":
        note = f"; overrides {launched[1]} {launched[0]}" if launched and launched[0] != requested else ""
        return requested, f"--mixed_precision {requested}{note}"
    if launched is not None:
        return launched[0], launched[1]
    return ("bf16" if cuda and bf16_ok else "no"), "auto: " + ("bf16 on CUDA" if cuda and bf16_ok else "fp32 on CPU" if not cuda else "fp32, no bf16 on this GPU")


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
