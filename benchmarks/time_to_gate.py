"""Time from start to a generator that passes the quality gate: training to the first passing checkpoint, then
sampling the demo's set, for today's fp32 + 50-step ancestral path against bf16 + a fast sampler.

  python benchmarks/time_to_gate.py --work /work/scratch/quick-convergence \\
      --arms fp32=quick-fp32:no:ddpm:50,bf16-sde=quick-bf16:bf16:dpm++2m-sde:10

WORK is benchmarks/quick_convergence.py's working directory: the quick study's phantom split, its judge,
and runs/ with the quick generator trained in fp32 and in bf16 side by side (checkpoints every 250 steps,
benchmarks/quick_precision.py). Each arm NAME=RUN:PRECISION:SAMPLER:EVALS walks the run's checkpoints in
order; at each it samples the demo's set (`--per_class` per class, seeds as gen/sample.py's) with its
sampler and precision, scores it with the report's gate (evaluate.gate.gate_verdict, default thresholds: above-chance
ratio, FID in the judge's echo features over the real-vs-real floor, outside-sector mean) and stops at the first
checkpoint that passes. Training seconds to that step are read from the run's stats.jsonl (wall time);
the sampling seconds of the final set are measured here in `--rounds` interleaved rounds (median).
Writes benchmarks/results/time_to_gate.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from echosynth.gen.core.config import field, parse_config, to_dict
from echosynth.gen.core.io import write_json
from echosynth.gen.core.launcher import cpu_flags
from echosynth.gen.core.rundir import cpu_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampler_sweep import _score, load_context  # noqa: E402


@dataclass
class TimeToGateConfig:
    work: str = field("/work/scratch/quick-convergence", help="benchmarks/quick_convergence.py's working directory")
    subset: int = field(100, help="the real training subset the generators learned from", min=1)
    arms: list[str] = field(default_factory=lambda: ["fp32=quick-fp32:no:ddpm:50", "bf16-sde=quick-bf16:bf16:dpm++2m-sde:10"],
                            help="NAME=RUN:PRECISION:SAMPLER:EVALS (RUN under WORK/runs)")
    per_class: int = field(50, help="images per class of the set (the demo's)", min=2)
    batch_size: int = field(200, help="images per forward", min=1)
    threads: int = field(1, help="torch threads", min=1)
    rounds: int = field(3, help="interleaved timing rounds of the final sets", min=1)
    out: str = field("benchmarks/results/time_to_gate.json", help="output JSON")


@dataclass
class Arm:
    name: str
    run: Path
    precision: str
    sampler: str
    evals: int

    @classmethod
    def parse(cls, item: str, work: Path) -> Arm:
        name, _, rest = item.partition("=")
        run, precision, sampler, evals = rest.split(":")
        return cls(name, work / "runs" / run, precision, sampler, int(evals))


def train_seconds(run: Path) -> dict[int, float]:
    """step -> wall seconds since training started, from stats.jsonl (the first interval extrapolated)."""
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "time" in r and "step" in r]
    (s0, t0), (s1, t1) = (rows[0]["step"], rows[0]["time"]), (rows[1]["step"], rows[1]["time"])
    start = t0 - s0 * (t1 - t0) / (s1 - s0)
    return {r["step"]: r["time"] - start for r in rows}


def gate(score: dict, c: dict, real_outside: float) -> dict:
    """The report's verdict (evaluate.gate.gate_verdict, default thresholds) on a scored set, handed the
    fields of a fidelity.json: the judge's ratio, the echo FID at the floor's n and the floor, the sector means."""
    from echosynth.evaluate.gate import gate_verdict

    fid_json = {"class_fidelity": {"ratio": score["ratio"]},
                "metrics": {"echo": {"overall": {"fake_at_floor_n": {"fid": score["fid_over_floor"] * c["floor"]},
                                                 "floor": {"fid": c["floor"]}, "n_floor": c["m"]}}},
                "sector_fidelity": {"outside_mean_fake": score["outside_mean"], "outside_mean_real": real_outside}}
    verdict = gate_verdict(fid_json)
    return {"passes": verdict["status"] == "pass", "gate_failed": verdict["failed"]}


def sample(arm: Arm, step: int, labels, seeds, batch_size: int) -> tuple[np.ndarray, float]:
    from echosynth.gen.diffusion.synthesis import sample_images
    from echosynth.gen.diffusion.trained import load_run

    loaded = load_run(arm.run, "ema", step=step)
    t0 = time.perf_counter()
    imgs = sample_images(loaded, labels, seeds, arm.evals, arm.sampler, batch_size=batch_size, precision=arm.precision)
    return imgs, time.perf_counter() - t0


def first_passing(arm: Arm, c: dict, labels, seeds, views, real_outside: float, batch_size: int) -> dict:
    from echosynth.gen.core.checkpoint import list_checkpoints

    rows = []
    for step in list_checkpoints(arm.run):
        imgs, secs = sample(arm, step, labels, seeds, batch_size)
        s = _score(c, imgs, views)
        row = {"step": step, "sample_seconds": secs, **{k: v for k, v in s.items() if not k.startswith("_")},
               **gate(s, c, real_outside)}
        rows.append(row)
        print(f"{arm.name:10s} step {step:5d}: ratio {s['ratio']:.2f}, FID/floor {s['fid_over_floor']:.2f}, "
              f"outside {s['outside_mean']:.2f}/255 -> {'pass' if row['passes'] else 'fail'}", flush=True)
        if row["passes"]:
            break
    return {"checkpoints": rows, "first_passing_step": rows[-1]["step"] if rows and rows[-1]["passes"] else None}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(TimeToGateConfig, argv, description=__doc__)
    import torch

    from echosynth.evaluate.sector import outside_means
    from echosynth.gen.data.image_sets import load_image_set
    from echosynth.gen.diffusion.synthesis import image_seeds, plan_labels

    torch.set_flush_denormal(True)
    torch.set_num_threads(cfg.threads)
    work = Path(cfg.work)
    c = load_context(work, cfg.subset)
    real_outside = float(outside_means(load_image_set(work / "data" / "split" / "train.csv").images, c["mask"]).mean())
    arms = [Arm.parse(a, work) for a in cfg.arms]
    classes = json.loads((arms[0].run / "classes.json").read_text())
    classes = classes["classes"] if isinstance(classes, dict) else classes
    labels = plan_labels(classes, cfg.per_class)
    views, seeds = np.array(classes)[labels], image_seeds(0, range(len(labels)))
    record = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv, "config": to_dict(cfg),
              "device": f"cpu: {cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads",
              "cpu_bf16_flags": sorted(f for f in cpu_flags() if "bf16" in f), "real_outside_mean": real_outside,
              "fid_floor": c["floor"], "n_floor": c["m"], "arms": {}}
    for arm in arms:
        found = first_passing(arm, c, labels, seeds, views, real_outside, cfg.batch_size)
        record["arms"][arm.name] = {"run": str(arm.run), "precision": arm.precision, "sampler": arm.sampler,
                                    "evals": arm.evals, **found}
        write_json(cfg.out, record)
    # the final sets' sampling time, interleaved
    timed = {a.name: [] for a in arms}
    for r in range(cfg.rounds):
        for arm in arms:
            step = record["arms"][arm.name]["first_passing_step"]
            if step is not None:
                timed[arm.name].append(sample(arm, step, labels, seeds, cfg.batch_size)[1])
        print(f"timing round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in timed.items() if v), flush=True)
    for arm in arms:
        rec = record["arms"][arm.name]
        if rec["first_passing_step"] is None:
            rec["seconds_to_gate"] = None
            continue
        rec["train_seconds"] = train_seconds(arm.run)[rec["first_passing_step"]]
        rec["sample_seconds_median"] = float(np.median(timed[arm.name]))
        rec["sample_seconds_rounds"] = timed[arm.name]
        rec["seconds_to_gate"] = rec["train_seconds"] + rec["sample_seconds_median"]
    base = record["arms"][arms[0].name].get("seconds_to_gate")
    for arm in arms:
        rec = record["arms"][arm.name]
        rec["speedup_vs_first_arm"] = base / rec["seconds_to_gate"] if base and rec.get("seconds_to_gate") else None
        sampling_base = record["arms"][arms[0].name].get("sample_seconds_median")
        if sampling_base and rec.get("sample_seconds_median"):
            rec["sampling_speedup_vs_first_arm"] = float(np.median(
                [b / a for a, b in zip(timed[arm.name], timed[arms[0].name])]))
    record["load_average_1min"] = os.getloadavg()[0]
    record["notes"] = ["train_seconds: wall time of the two runs, trained side by side on this machine "
                       "(benchmarks/quick_precision.py), so their ratio is fair and their absolute values are "
                       "those of a shared 2-core machine"]
    write_json(cfg.out, record)
    for arm in arms:
        rec = record["arms"][arm.name]
        print(f"{arm.name}: first passing step {rec['first_passing_step']}, "
              f"{rec.get('seconds_to_gate') or float('nan'):.0f} s to a gate-passing set "
              f"(x{rec.get('speedup_vs_first_arm') or float('nan'):.2f})")
    print(f"wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
