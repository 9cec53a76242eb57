"""Benchmark: the tiny study's wall time on a local 2-slot Slurm cluster vs the local executor --jobs 1.

Both in one run: the sequential local executor (`--jobs 1`) and `--executor slurm` on a local
cluster where two one-CPU jobs run at once.

  python benchmarks/study_slurm.py [--config configs/study/tiny.yaml] [--out benchmarks/results/study_slurm.json]

The cluster is tests/slurm_cluster.py's (munged, slurmctld, slurmd on localhost; 2 CPUs, one-CPU
jobs, so two stages run at once); it needs Debian's slurm-wlm and munge and root. Each study runs
from nothing into its own temp dir. Writes the two wall times, per-stage seconds, the machine and
the load as JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from echosynth.gen.core.io import write_json
from echosynth.gen.core.rundir import cpu_name
from echosynth.pipelines.config import SLURM_KINDS

REPO = Path(__file__).resolve().parent.parent


def _cluster_module():
    """tests/slurm_cluster.py, loaded by path (the tests directory is not a package)."""
    spec = importlib.util.spec_from_file_location("slurm_cluster", REPO / "tests" / "slurm_cluster.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, dict]:
    """Wall seconds of a study run and its stages' seconds from study.json."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"study_slurm.py: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    out = Path(cmd[cmd.index("--out") + 1])
    stages = {s["name"]: s.get("seconds") for s in json.loads((out / "study.json").read_text())["stages"]}
    return round(seconds, 1), stages


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/study/tiny.yaml")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "study_slurm.json"))
    args = ap.parse_args(argv)
    sc = _cluster_module()
    base = yaml.safe_load((REPO / args.config).read_text())
    # One CPU per job on the 2-CPU cluster: two stages at once, as --jobs 2 would locally.
    base["slurm"] = {**{k: {"cpus": 1, "gpus": 0, "mem": "", "time": 60} for k in SLURM_KINDS}, "poll_s": 1.0}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="study-slurm-") as tmp, sc.LocalSlurm(cpus=2) as cluster:
        cfg = Path(tmp) / "study.yaml"
        cfg.write_text(yaml.safe_dump(base, sort_keys=False))
        study = [sys.executable, "pipelines/study.py", "--config", str(cfg)]
        load0 = os.getloadavg()[0]
        local_s, local_stages = _run([*study, "--out", f"{tmp}/local", "--jobs", "1"], env)
        slurm_s, slurm_stages = _run([*study, "--out", f"{tmp}/slurm", "--executor", "slurm"],
                                     {**env, **cluster.env, "OMP_NUM_THREADS": "1"})
        load1 = os.getloadavg()[0]
    result = {
        "benchmark": f"{args.config}: pipelines/study.py wall time, local executor --jobs 1 vs --executor slurm "
                     "on a local 2-CPU Slurm cluster (one-CPU jobs: 2 at once)",
        "command": "python benchmarks/study_slurm.py",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "load_avg_1min": {"before": round(load0, 2), "after": round(load1, 2)},
        "stages": len(local_stages),
        "local_jobs1_s": local_s,
        "slurm_2slots_s": slurm_s,
        "speedup": round(local_s / slurm_s, 2),
        "stage_seconds": {"local": local_stages, "slurm": slurm_stages},
    }
    write_json(Path(args.out), result)
    print(f"{args.config}: local --jobs 1 {local_s:.0f} s, slurm (2 slots) {slurm_s:.0f} s "
          f"({result['speedup']:.2f}x); {args.out}")
    return result


if __name__ == "__main__":
    main()
