"""Wall time of `make demo` (the `quick` study, nothing cached), per stage, and its quality-gate verdicts.

  python benchmarks/study_quick_duration.py                      # runs pipelines/demo.py into a fresh dir
  python benchmarks/study_quick_duration.py --existing runs/study-quick --wall_s 655   # record a `time make demo`

Writes benchmarks/results/study_quick_duration.json: the wall time, each stage's seconds, the
synthetic sets' verdicts under the report's gate and under the demo's targets (class-fidelity
ratio ≥ 0.8, FID ≤ 3× the floor, outside-sector mean ≤ 5/255), the machine and the load.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from echosynth.evaluate.gate import GateConfig, gate_verdict
from echosynth.gen.core.config import field, parse_config, to_dict
from echosynth.gen.core.io import read_json, write_json

REPO = Path(__file__).resolve().parent.parent
DEMO_TARGETS = GateConfig(min_class_ratio=0.8, max_fid_over_floor=3.0, outside_factor=1.0, outside_margin=5.0)


@dataclass
class DurationConfig:
    existing: str = field("", help="a finished study dir to record instead of running the demo")
    wall_s: float = field(0.0, help="with --existing: the wall time measured around it (e.g. by `time make demo`)", min=0.0)
    out: str = field("benchmarks/results/study_quick_duration.json", help="output JSON")


def record(study: Path, wall_s: float) -> dict:
    """Stage seconds, gate verdicts and the study's own elapsed time from a finished study dir."""
    info = read_json(study / "study.json")
    stages = {s["name"]: s.get("seconds") for s in info["stages"]}
    sets = {}
    for path in sorted((study / "runs").glob("fidelity-n*/fidelity.json")):
        data = read_json(path)
        demo = gate_verdict(data, DEMO_TARGETS)
        sets[path.parent.name] = {"gate": gate_verdict(data)["status"], "demo_targets": demo["status"],
                                  "checks": [c["text"] for c in demo["checks"]]}
    return {"wall_s": wall_s, "study_s": info.get("last_run_seconds"), "stages": len(stages),
            "jobs": info.get("jobs"), "stage_s": stages, "synthetic_sets": sets}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(DurationConfig, argv, description=__doc__)
    load = os.getloadavg()[0]
    if cfg.existing:
        study, wall = Path(cfg.existing), cfg.wall_s
    else:
        study = Path(tempfile.mkdtemp(prefix="study-quick-"))
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "pipelines/demo.py", "--out", str(study)], cwd=REPO, check=True)
        wall = time.perf_counter() - t0
    rec = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv, "config": to_dict(cfg),
           "benchmark": "the quick study (make demo), nothing cached, venv installed",
           "device": f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "load_average_1min_at_start": load, "load_average_1min_at_end": os.getloadavg()[0],
           **record(study, wall)}
    write_json(cfg.out, rec)
    print(f"{rec['stages']} stages in {wall:.0f} s; sets: " +
          ", ".join(f"{k} gate {v['gate']}, demo targets {v['demo_targets']}" for k, v in rec["synthetic_sets"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
