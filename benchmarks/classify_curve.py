"""Validation metric against optimizer steps for the `quick` study's classifier arms: the curve that chose its recipe.

    .venv/bin/python benchmarks/classify_curve.py --split runs/study-quick/data/split \\
        --synthetic runs/study-quick/runs/sample-n100/manifest.csv

Trains classify/train.py (configs/classify/quick.yaml with a constant learning rate, so one run gives the
whole curve) for each architecture on the real-only (train_<smallest>.csv) and synthetic-only arms, and
the class-fidelity judge (the full training split, class-balanced sampler) on small_cnn, scoring validation
every --eval_every steps. Writes benchmarks/results/classify_curve.json (per arm, arch and seed: steps,
validation balanced accuracy and macro AUPRC, seconds) and docs/img/classify_curve.png. The plateau of an
arm is the first scored step whose seed-mean validation balanced accuracy comes within --tolerance of the
best it reaches over the whole run.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from echosynth.gen.core.config import field, parse_config
from echosynth.gen.core.io import write_json

REPO = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class CurveConfig:
    """benchmarks/classify_curve.py settings."""

    split: str = field("", help="a gen/prepare.py split directory (the quick study's data/split)")
    synthetic: str = field("", help="synthetic manifest.csv of the smallest subset's DDPM (empty: real arm only)")
    subset: int = field(100, min=1, help="real subset size (train_<subset>.csv)")
    arms: list[str] = field(default_factory=lambda: ["real", "synthetic"], choices=("real", "synthetic"),
                            help="arms to measure (synthetic needs --synthetic)")
    archs: list[str] = field(default_factory=lambda: ["small_cnn", "resnet18"], help="architectures")
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], help="seeds of the first architecture's arms")
    other_seeds: list[int] = field(default_factory=lambda: [0], help="seeds of the other architectures' arms")
    steps: int = field(1000, min=1, help="optimizer steps of the first architecture")
    other_steps: int = field(600, min=1, help="optimizer steps of the other architectures")
    eval_every: int = field(25, min=1, help="steps between validation scores")
    judge_steps: int = field(1000, min=0, help="optimizer steps of the judge curve (0: none)")
    lr: float = field(1e-3, min=0, help="constant learning rate (Adam)")
    global_batch: int = field(32, min=2, help="images per step")
    precise_bn: int = field(512, min=0, help="precise BN images before each validation")
    tolerance: float = field(0.02, min=0, help="plateau: within this of the best seed-mean validation balanced accuracy")
    jobs: int = field(2, min=1, help="runs at once (one torch thread each)")
    work: str = field("runs/classify-curve", help="run directories")
    out: str = field("benchmarks/results/classify_curve.json", help="JSON results file")
    plot: str = field("docs/img/classify_curve.png", help="plot file (empty: none)")
    merge: bool = field(False, help="keep the other runs already in --out (e.g. add the synthetic arm later)")
    redraw: bool = field(False, help="only redraw --plot from --out's runs")
    mark_step: int = field(300, min=0, help="draw a line at the chosen budget (0: none)")


def run_args(cfg: CurveConfig, arm: str, arch: str, seeds: list[int], steps: int) -> list[str]:
    """classify/train.py arguments of one curve run."""
    split = Path(cfg.split)
    train = {"real": f"real:{split / f'train_{cfg.subset}.csv'}", "synthetic": f"synthetic:{cfg.synthetic}",
             "judge": f"real:{split / 'train.csv'}"}[arm]
    args = ["--config", "configs/classify/quick.yaml", "--arch", arch, "--train", train,
            "--val", f"val={split / 'val.csv'}", "--steps", steps, "--eval_every", cfg.eval_every,
            "--schedule", "none", "--lr", cfg.lr, "--global_batch", cfg.global_batch, "--precise_bn", cfg.precise_bn,
            "--seeds", ",".join(map(str, seeds)), "--run_dir", Path(cfg.work) / f"{arm}-{arch}", "--overwrite", "true",
            "--threads", 1, "--workers", 1, "--progress", "false", "--checkpoint_every", 0]
    if arm == "judge":
        args += ["--balance", "sampler"]
    return [sys.executable, "classify/train.py", *map(str, args)]


def read_curve(run: Path) -> dict:
    """Per seed: steps, validation balanced accuracy and macro AUPRC, seconds, from seed-*/stats.jsonl."""
    out = {}
    for d in sorted(run.glob("seed-*")):
        rows = [json.loads(x) for x in (d / "stats.jsonl").read_text().splitlines() if x.strip()]
        out[d.name.split("-")[1]] = {"step": [r["step"] for r in rows],
                                     "val_balanced_accuracy": [r["val_balanced_accuracy"] for r in rows],
                                     "val_macro_auprc": [r["val_macro_auprc"] for r in rows],
                                     "seconds": round(sum(r["seconds"] for r in rows), 1)}
    return out


def plateau(curve: dict, tolerance: float) -> dict:
    """Seed-mean curve, its best value and the first step within `tolerance` of it."""
    seeds = list(curve.values())
    steps = seeds[0]["step"]
    mean = np.mean([s["val_balanced_accuracy"] for s in seeds], axis=0)
    auprc = np.mean([s["val_macro_auprc"] for s in seeds], axis=0)
    best = float(mean.max())
    first = int(steps[int(np.flatnonzero(mean >= best - tolerance)[0])])
    return {"step": steps, "mean_val_balanced_accuracy": [round(float(v), 4) for v in mean],
            "mean_val_macro_auprc": [round(float(v), 4) for v in auprc], "best": round(best, 4),
            "plateau_step": first, "seconds_per_seed": round(float(np.mean([s["seconds"] for s in seeds])), 1),
            "seconds_per_step": round(float(np.mean([s["seconds"] for s in seeds])) / steps[-1], 4)}


def draw(results: dict, path: Path, mark_step: int = 0) -> None:
    """Seed-mean validation balanced accuracy and macro AUPRC against steps, one line per arm and arch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, r in results.items():
        p = r["summary"]
        for ax, metric in zip(axes, ("mean_val_balanced_accuracy", "mean_val_macro_auprc")):
            ax.plot(p["step"], p[metric], label=f"{key} ({len(r['seeds'])} seed{'s' * (len(r['seeds']) > 1)})")
    for ax, title in zip(axes, ("validation balanced accuracy", "validation macro AUPRC")):
        ax.axhline(0.25, color="grey", lw=0.8, ls=":")
        if mark_step:
            ax.axvline(mark_step, color="black", lw=0.8, ls="--")
            ax.text(mark_step, 0.27, f" quick recipe: {mark_step} steps", fontsize=8)
        ax.set_xlabel("optimizer steps (batch 32)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(CurveConfig, argv, description=__doc__.split("\n")[0])
    if cfg.redraw:
        draw(json.loads(Path(cfg.out).read_text())["runs"], Path(cfg.plot), cfg.mark_step)
        return 0
    jobs = []
    for i, arch in enumerate(cfg.archs):
        seeds, steps = (cfg.seeds, cfg.steps) if i == 0 else (cfg.other_seeds, cfg.other_steps)
        for arm in [a for a in cfg.arms if a == "real" or cfg.synthetic]:
            jobs.append((arm, arch, seeds, steps))
    if cfg.judge_steps:
        jobs.append(("judge", cfg.archs[0], [0], cfg.judge_steps))
    running, results, t_all = [], {}, time.time()
    this_command = "python benchmarks/classify_curve.py " + " ".join(argv if argv is not None else sys.argv[1:])
    Path(cfg.work).mkdir(parents=True, exist_ok=True)
    while jobs or running:
        while jobs and len(running) < cfg.jobs:
            arm, arch, seeds, steps = jobs.pop(0)
            log = open(Path(cfg.work) / f"{arm}-{arch}.log", "w")
            proc = subprocess.Popen(run_args(cfg, arm, arch, seeds, steps), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
            running.append((proc, arm, arch, seeds, log, time.time()))
        time.sleep(2)
        for item in list(running):
            proc, arm, arch, seeds, log, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            if proc.returncode:
                print(f"{arm} {arch}: classify/train.py failed; see {log.name}", file=sys.stderr)
                continue
            curve = read_curve(Path(cfg.work) / f"{arm}-{arch}")
            key = f"{arm} {arch} lr {cfg.lr:g}"
            results[key] = {"arm": arm, "arch": arch, "lr": cfg.lr, "command": this_command, "seeds": curve,
                            "summary": plateau(curve, cfg.tolerance),
                            "wall_seconds": round(time.time() - t0, 1)}
            s = results[key]["summary"]
            print(f"{key}: best val balanced accuracy {s['best']:.3f}, plateau at step {s['plateau_step']}, "
                  f"{s['seconds_per_step']} s/step")
    import platform

    import torch

    old = json.loads(Path(cfg.out).read_text()) if cfg.merge and Path(cfg.out).is_file() else {}
    kept = {}
    for key, r in old.get("runs", {}).items():  # name every run by its learning rate
        r.setdefault("lr", old.get("settings", {}).get("lr"))
        r.setdefault("command", (old.get("commands") or [None])[0])
        kept[key if " lr " in key else f"{key} lr {r['lr']:g}"] = r
    results = {**kept, **results}
    commands = old.get("commands", []) + [this_command]
    write_json(Path(cfg.out), {
        "benchmark": "benchmarks/classify_curve.py: validation metric vs optimizer steps (constant LR)",
        "commands": commands,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": f"{platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads available, shared with other jobs",
        "settings": dataclasses.asdict(cfg), "wall_seconds": round(time.time() - t_all, 1), "runs": results})
    if cfg.plot:
        draw(results, Path(cfg.plot), cfg.mark_step)
    print(f"wrote {cfg.out}" + (f" and {cfg.plot}" if cfg.plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
