"""`make demo`: run the `quick` study on the phantom (CPU, 2 cores, ≤ 15 minutes) and say where the report is.

  python pipelines/demo.py [--out DIR] [any other pipelines/study.py flag]

Re-running it reuses every finished stage, so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import sys
from pathlib import Path

from echosynth.gen.core.script import run_script
from echosynth.pipelines import study

REPO = Path(__file__).resolve().parent.parent

DEFAULT_OUT = REPO / "runs" / "study-quick"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    out = DEFAULT_OUT
    for i, a in enumerate(argv):
        if a == "--out" and i + 1 < len(argv):
            out = Path(argv[i + 1])
        elif a.startswith("--out="):
            out = Path(a.split("=", 1)[1])
    if out == DEFAULT_OUT:
        argv += ["--out", str(out)]
    rc = study.main(["--config", str(REPO / "configs" / "study" / "quick.yaml"), *argv])
    report = out / "report.html"
    if rc == 0 and report.is_file():
        print(f"\nThe report is at {report.resolve()}\n(one self-contained file: open it in any browser, offline.)")
    return rc


if __name__ == "__main__":
    run_script(main)
