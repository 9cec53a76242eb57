"""The `quick` generator trained in bf16 and in fp32: both loss curves, training speed, and the gate metrics at the end.

  python benchmarks/quick_convergence.py --work /work/scratch/quick-convergence --variants quick-bf16,quick-fp32 --score false
  python benchmarks/sampler_sweep.py --run /work/scratch/quick-convergence/runs/quick-bf16 --per_class 25 \\
      --settings ddpm:50 --precision bf16 --timing_rounds 0 --out /work/scratch/gate-bf16.json --plot /work/scratch/gate-bf16.png
  python benchmarks/sampler_sweep.py --run /work/scratch/quick-convergence/runs/quick-fp32 --per_class 25 \\
      --settings ddpm:50 --precision no --timing_rounds 0 --out /work/scratch/gate-fp32.json --plot /work/scratch/gate-fp32.png
  python benchmarks/quick_precision.py --runs /work/scratch/quick-convergence/runs \\
      --gate bf16=/work/scratch/gate-bf16.json,fp32=/work/scratch/gate-fp32.json

Both runs use the quick study's DDPM settings (tiny UNet, 32 px, 100 phantom images, global batch 16,
lr 1e-3, 2,000 steps) and differ only in `--mixed_precision`. They were trained side by side (one
thread each) on the same machine, so their img/s are comparable. Each generator's gate metrics are
those of benchmarks/sampler_sweep.py for one setting (the demo's 50-step ancestral sampler, each
generator sampled in its own precision), with the class-fidelity ratio's bootstrap interval. Writes
benchmarks/results/quick_precision.json and docs/img/quick_precision.png.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from echosynth.gen.core.config import field, parse_config, to_dict
from echosynth.gen.core.io import read_json, read_jsonl, write_json


@dataclass
class QuickPrecisionConfig:
    runs: str = field("/work/scratch/quick-convergence/runs", help="directory holding quick-bf16/ and quick-fp32/")
    gate: list[str] = field(default_factory=list, help="NAME=sampler_sweep JSON items (bf16=..., fp32=...)")
    out: str = field("benchmarks/results/quick_precision.json", help="output JSON")
    plot: str = field("docs/img/quick_precision.png", help="output plot")


def _smooth(y: np.ndarray, k: int = 10) -> np.ndarray:
    return np.convolve(y, np.ones(k) / k, mode="valid") if len(y) >= k else y


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(QuickPrecisionConfig, argv, description=__doc__)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {"bf16": Path(cfg.runs) / "quick-bf16", "fp32": Path(cfg.runs) / "quick-fp32"}
    gates = dict(item.split("=", 1) for item in cfg.gate)
    record = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv, "config": to_dict(cfg), "runs": {}}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    for name, run in runs.items():
        rows = read_jsonl(run / "stats.jsonl")
        steps = np.array([r["step"] for r in rows])
        rec = {"run": str(run), "precision": read_json(run / "config.json")["mixed_precision"],
               "steps": int(steps[-1]), "images_per_s_median": float(np.median([r["images_per_s"] for r in rows])),
               "loss_last_200_steps": float(np.mean([r["loss"] for r in rows if r["step"] > steps[-1] - 200])),
               "mse_last_200_steps": float(np.mean([r["mse"] for r in rows if r["step"] > steps[-1] - 200]))}
        if name in gates:
            g = read_json(gates[name])
            row = next(r for r in g["rows"] if (r["sampler"], r["evals"]) == ("ddpm", 50))
            rec["gate"] = {k: row[k] for k in ("ratio", "ratio_ci", "fid_over_floor", "outside_mean")}
            rec["gate"].update(sampled_in=g["config"]["precision"], per_class=g["config"]["per_class"])
        record["runs"][name] = rec
        for ax, key in zip(axes[:2], ("loss", "mse")):
            y = _smooth(np.array([r[key] for r in rows]))
            ax.plot(steps[len(steps) - len(y):], y, label=f"{name} autocast" if name == "bf16" else name)
            ax.set_yscale("log")
            ax.set_xlabel("training step")
            ax.set_title(f"{key} (moving mean of 10 log points)", fontsize=10)
        axes[2].plot(steps, [r["images_per_s"] for r in rows], label=name, lw=0.8)
    axes[2].set_title("training img/s (shared 2-core machine, one thread each)", fontsize=10)
    axes[2].set_xlabel("training step")
    axes[0].legend(fontsize=8)
    for name, rec in record["runs"].items():
        if "gate" in rec:
            gt = rec["gate"]
            axes[1].text(0.02, 0.05 + 0.1 * list(runs).index(name), f"{name}: ratio {gt['ratio']:.2f} "
                         f"[{gt['ratio_ci'][0]:.2f}, {gt['ratio_ci'][1]:.2f}], FID/floor {gt['fid_over_floor']:.2f}, "
                         f"outside {gt['outside_mean']:.1f}", transform=axes[1].transAxes, fontsize=8)
    fig.suptitle("quick generator (tiny UNet, 32 px, batch 16, lr 1e-3): bf16 autocast vs fp32", fontsize=10)
    Path(cfg.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(cfg.plot, dpi=110)
    write_json(cfg.out, record)
    for name, rec in record["runs"].items():
        print(name, {k: v for k, v in rec.items() if k != "run"})
    print(f"wrote {cfg.out} and {cfg.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
