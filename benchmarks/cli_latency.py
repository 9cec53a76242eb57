"""Benchmark: how long each script takes to answer `--help` and a config error (a fresh interpreter each time).

  python benchmarks/cli_latency.py [--repeats 5] [--out benchmarks/results/cli_latency.json]

The scripts parse before importing torch, so both answers should take about a second; the
time of `import torch` alone is measured beside them for scale. Writes medians, minima and the
machine as JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from echosynth.gen.core.io import write_json
from echosynth.gen.core.rundir import cpu_name

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = {
    "gen/train.py": ["--data", "x.csv", "--lr", "nan"],
    "gen/sample.py": ["--run", "r", "--out", "o", "--per_class", "1", "--guidance", "nan"],
    "gen/export.py": ["r", "--out", "o", "--step", "-1"],
    "classify/train.py": ["--train", "real:x.csv", "--val", "v.csv", "--lr", "nan"],
    "classify/predict.py": ["--model", "r", "--images", "x", "--batch", "0"],
}


def _time(cmd: list[str], want_rc: int) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    dt_s = time.perf_counter() - t0
    if proc.returncode != want_rc:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}, expected {want_rc}:\n{proc.stderr[-2000:]}")
    return dt_s


def main(argv: list[str] | None = None) -> dict:
    """Time --help and a config error of every script, `repeats` times each; print and save."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="runs per measurement (the median is reported)")
    ap.add_argument("--out", default="benchmarks/results/cli_latency.json")
    a = ap.parse_args(argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results = {}
    cases = {"import torch": ([sys.executable, "-c", "import torch"], 0)}
    for script, bad in SCRIPTS.items():
        cases[f"{script} --help"] = ([sys.executable, script, "--help"], 0)
        cases[f"{script} (config error)"] = ([sys.executable, script, *bad], 2)
    for name, (cmd, rc) in cases.items():
        times = [_time(cmd, rc) for _ in range(a.repeats)]
        results[name] = {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3)}
        print(f"{name:40s} median {results[name]['median_s']:.2f} s  min {results[name]['min_s']:.2f} s")
    out = {
        "benchmark": "CLI latency: --help and a config error, fresh interpreter",
        "repeats": a.repeats, "results": results,
        "device": f"cpu: {cpu_name()} ({os.cpu_count()} logical cores)",
        "load_avg_1min_before": round(load, 2) if load is not None else None,
        "python": platform.python_version(),
        "command": "python benchmarks/cli_latency.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(REPO / a.out, out)
    return out


if __name__ == "__main__":
    main()
