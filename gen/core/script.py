"""How every script's main() ends: the one error path.

    @user_errors("train.py", FileExistsError, FileNotFoundError, ValueError)
    def main(argv=None) -> int: ...

    if __name__ == "__main__":
        run_script(main)

An error the user can fix (a ConfigError, a SetupError, or one of the types a script lists) is one
line, `PROG: error: MESSAGE`, and an exit status (2 unless the script says otherwise), never a
traceback; main() called in-process returns that status. A signal after a checkpoint prints how to
continue and exits 130 or 143; an unwritable output is one line and exit 2; output piped into
`head` ends quietly; Ctrl-C elsewhere exits 130.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from echosynth.gen.core.config import ConfigError, SetupError
from echosynth.gen.core.io import run_main
from echosynth.gen.core.launcher import Interrupted


def user_errors(prog: str, *errors: type[Exception], code: int = 2) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a script's main(): a ConfigError, a SetupError or an exception of `errors` (input the user
    can fix) becomes one line, `PROG: error: MESSAGE` (`error: MESSAGE` for an empty prog), and main()
    returns `code`; an echosynth.gen.core.launcher.Interrupted (a signal, after a checkpoint) prints its
    message and returns its 130 or 143. Only the main process prints: every process meets the same input.
    """
    caught = (ConfigError, SetupError, *errors)

    def wrap(main: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(main)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return main(*args, **kwargs)
            except Interrupted as e:
                _say(str(e))
                return e.exit_code
            except caught as e:
                _say(f"{prog}: error: {e}" if prog else f"error: {e}")
                return code
        return guarded
    return wrap


def _say(line: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr, flush=True)


def run_script(main: Callable[[], int | None]) -> None:
    """Run a script's `main()` (decorated with user_errors) and exit with its status; an unwritable output is
    one line and exit 2, --help and config errors exit as parse_config says, output piped into `head` ends
    quietly, Ctrl-C exits 130."""
    try:
        try:
            code = run_main(main)  # an unwritable output: one line, exit 2
        except SystemExit as e:  # --help, --dry-run, config errors: flush here, where a closed pipe can be caught
            code = e.code
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader (e.g. `| head`) has gone: point stdout at /dev/null so the exit-time flush stays quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
