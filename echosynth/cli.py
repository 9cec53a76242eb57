"""The `echosynth` command: one subcommand per verb, each running the script a documented path runs.

    echosynth prepare --source phantom --out data/phantom --n 2000
    echosynth train --config configs/gen/tiny.yaml --data data/split/train.csv
    echosynth study --config configs/study/quick.yaml --out runs/study-quick
    echosynth survey app -- --survey surveys/pilot
    echosynth VERB --help

`echosynth VERB ARGS` is `python SCRIPT ARGS` (the same parser, defaults and exit codes); the
scripts stay runnable by path. `echosynth train` runs one process; for several use
`accelerate launch gen/train.py ...` or `accelerate launch -m echosynth.gen.train ...`.
"""

from __future__ import annotations

import ast
import runpy
import subprocess
import sys
from pathlib import Path

from echosynth import __version__

# verb -> module (each a script with a main())
VERBS: dict[str, str] = {
    "prepare": "echosynth.gen.prepare",
    "train": "echosynth.gen.train",
    "sample": "echosynth.gen.sample",
    "export": "echosynth.gen.export",
    "classify": "echosynth.classify.train",
    "predict": "echosynth.classify.predict",
    "fidelity": "echosynth.evaluate.fidelity",
    "privacy": "echosynth.evaluate.privacy",
    "embed": "echosynth.evaluate.embed",
    "study": "echosynth.pipelines.study",
    "report": "echosynth.reports.build",
}
# `echosynth survey ACTION`: build and analyze are scripts; app is the Streamlit app
SURVEY: dict[str, str] = {
    "build": "echosynth.evaluate.survey.build",
    "app": "echosynth.evaluate.survey.app",
    "analyze": "echosynth.evaluate.survey.analyze",
}


def module_file(module: str) -> Path:
    """The source file of a module, found without importing it (so `--help` stays fast)."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise SystemExit(f"echosynth: module {module} is not installed; reinstall with `make venv`")
    return Path(spec.origin)


def summary(module: str) -> str:
    """The first line of a script's docstring, read with ast (no import)."""
    doc = ast.get_docstring(ast.parse(module_file(module).read_text(encoding="utf-8"))) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def usage() -> str:
    lines = [__doc__.strip(), "", "verbs:"]
    for verb, module in VERBS.items():
        lines.append(f"  {verb:9s} {summary(module)}")
    lines.append(f"  {'survey':9s} the clinicians' survey: survey build | survey app | survey analyze")
    return "\n".join(lines)


def run_module(module: str, args: list[str]) -> int:
    """Run a script module as `python path/to/script.py args` would: its main() under __name__ == "__main__"."""
    path = module_file(module)
    sys.argv = [str(path), *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:  # the scripts end with sys.exit(main())
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def survey(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help") or args[0] not in SURVEY:
        known = " | ".join(SURVEY)
        print(f"usage: echosynth survey {{{known}}} ARGS\n\n"
              "  build    pairs of real and synthetic images for the survey\n"
              "  app      serve the survey with Streamlit (ARGS after -- go to the app)\n"
              "  analyze  the survey's answers: accuracy, agreement and their intervals",
              file=sys.stdout if args and args[0] in ("-h", "--help") else sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    action, rest = args[0], args[1:]
    if action == "app":
        cmd = [sys.executable, "-m", "streamlit", "run", str(module_file(SURVEY["app"])), *rest]
        return subprocess.call(cmd)
    return run_module(SURVEY[action], rest)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"echosynth {__version__}")
        return 0
    verb, rest = args[0], args[1:]
    if verb == "survey":
        return survey(rest)
    if verb not in VERBS:
        import difflib

        near = difflib.get_close_matches(verb, [*VERBS, "survey"], n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        print(f"echosynth: unknown verb {verb!r}{hint} (echosynth --help lists them)", file=sys.stderr)
        return 2
    return run_module(VERBS[verb], rest)


if __name__ == "__main__":
    sys.exit(main())
