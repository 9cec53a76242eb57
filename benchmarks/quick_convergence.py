"""Convergence of the demo's DDPM on CPU: class fidelity, FID over its floor and outside-sector mean vs steps.

  python benchmarks/quick_convergence.py                                   # the variants below, ~1 h on 2 cores
  python benchmarks/quick_convergence.py --variants b16-lr1e-3 --steps 1500 --every 250

The data are the `quick` study's (phantom of 1,200 frames at 32 px, the 100-image subset). A
judge (ResNet18, class-balanced sampler) is trained on the full real training split, as the
study does. Every variant is trained with the real `gen/train.py` (one thread, checkpoints kept
every `--every` steps); each checkpoint's EMA weights sample `--per_class` images per class, which
are scored exactly as the study's quality gate scores a synthetic set:

- class fidelity: the judge's accuracy on them, and the above-chance ratio against its balanced
  accuracy on the validation split (evaluate/class_fidelity.py);
- FID in the judge's penultimate features of the synthetic images against the subset, at the
  real-vs-real floor's sample size, divided by that floor (the subset against the validation split);
- the mean intensity outside the scan sector (evaluate/sector.py), 0–255 scale.

Wall time is the training time logged in each run's stats.jsonl. Writes
benchmarks/results/quick_convergence.json and docs/img/quick_convergence.png; re-running reuses
finished runs and scores (delete --work to start over).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from echosynth.gen.core.config import field, parse_config, to_dict
from echosynth.gen.core.io import read_json, read_jsonl, write_json
from echosynth.gen.core.rundir import cpu_name
from echosynth.gen.diffusion.settings import SAMPLERS

REPO = Path(__file__).resolve().parent.parent

# name -> gen/train.py flags on top of configs/gen/tiny.yaml (the demo's UNet: 1.2 M parameters at 32 px)
VARIANTS: dict[str, dict[str, str]] = {
    "b16-lr1e-3": {"global_batch": "16", "lr": "0.001"},
    "b8-lr1e-3": {"global_batch": "8", "lr": "0.001", "warmup_steps": "50"},
    "b16-lr2e-3-cfg": {"global_batch": "16", "lr": "0.002", "warmup_steps": "100", "cfg_dropout": "0.1"},
    "b16-lr2e-4": {"global_batch": "16", "lr": "0.0002"},
    # the quick study's settings in each precision (issue 23: quality does not move with bf16)
    "quick-bf16": {"global_batch": "16", "lr": "0.001", "mixed_precision": "bf16"},
    "quick-fp32": {"global_batch": "16", "lr": "0.001", "mixed_precision": "no"},
}


@dataclass
class ConvergenceConfig:
    work: str = field("runs/convergence", help="working directory (data, judge, runs, scores)")
    variants: list[str] = field(default_factory=lambda: ["b16-lr1e-3", "b8-lr1e-3", "b16-lr2e-3-cfg"],
                                help=f"training variants: {', '.join(VARIANTS)}", choices=tuple(VARIANTS))
    steps: int = field(2000, help="DDPM training steps per variant", min=1)
    every: int = field(250, help="score a checkpoint every N steps", min=1)
    subset: int = field(100, help="real training subset the DDPM learns from (the demo's)", min=10)
    per_class: int = field(50, help="synthetic images per class and checkpoint (the demo's per_class)", min=2)
    sampler: str = field("ddpm", help="sampler", choices=SAMPLERS)
    sample_steps: int = field(50, help="sampling steps", min=1)
    guidance: float = field(1.0, help="classifier-free guidance (variants trained with cfg_dropout only)", min=0.0)
    jobs: int = field(2, help="variants trained at once (one thread each)", min=1)
    score: bool = field(True, help="score the checkpoints (false: only train the variants)")
    out: str = field("benchmarks/results/quick_convergence.json", help="output JSON")
    plot: str = field("docs/img/quick_convergence.png", help="output plot")


def run(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start a repo CLI with one thread, output to `log`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "a"), stderr=subprocess.STDOUT)


def check(proc: subprocess.Popen, log: Path) -> None:
    if proc.wait() != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise SystemExit(f"quick_convergence: {' '.join(map(str, proc.args[:3]))} failed; {log}:\n{tail}")


def prepare(cfg: ConvergenceConfig, work: Path) -> tuple[Path, Path]:
    """Phantom + split as the quick study makes them; the judge on the full training split."""
    from echosynth.gen.data.build import build_phantom, build_splits

    split = work / "data" / "split"
    if not (split / "splits.json").is_file():
        build_phantom(work / "data" / "phantom", n=1200, size=32, seed=0, progress=False)
        build_splits(work / "data" / "phantom" / "manifest.csv", split, [cfg.subset], seed=0,
                     holdout_sources=["camus", "unity"])
    judge = work / "judge"
    if not (judge / "summary.json").is_file():
        log = work / "logs" / "judge.log"
        check(run([sys.executable, "classify/train.py", "--config", "configs/classify/quick.yaml", "--arch", "resnet18",
                   "--train", f"real:{split / 'train.csv'}", "--val", f"val={split / 'val.csv'}", "--run_dir", judge,
                   "--seeds", "0", "--balance", "sampler", "--workers", "1", "--progress", "false", "--overwrite"], log), log)
    return split, judge


def train_variants(cfg: ConvergenceConfig, work: Path, split: Path) -> None:
    """gen/train.py per variant (resumed when interrupted), `jobs` at a time."""
    todo = [v for v in cfg.variants if not (work / "runs" / v / "checkpoints" / f"step-{cfg.steps:07d}").is_dir()]
    running: list[tuple[subprocess.Popen, Path]] = []
    for v in todo:
        run_dir = work / "runs" / v
        flags = [a for k, val in VARIANTS[v].items() for a in (f"--{k}", val)]
        resume = ["--resume", "latest"] if (run_dir / "config.json").is_file() else []
        cmd = [sys.executable, "gen/train.py", "--config", "configs/gen/tiny.yaml", "--data", split / f"train_{cfg.subset}.csv",
               "--run_dir", run_dir, "--steps", cfg.steps, "--checkpoint_every", cfg.every, "--keep_every", cfg.every,
               "--log_every", 10, "--sample_per_class", 0, *flags, *resume]
        log = work / "logs" / f"{v}.log"
        running.append((run([str(c) for c in cmd], log), log))
        if len(running) >= cfg.jobs:
            check(*running.pop(0))
    for p, log in running:
        check(p, log)


def wall_seconds(run_dir: Path) -> dict[int, float]:
    """Training seconds at each logged step: the sum of the logged intervals' durations."""
    out, total, prev = {}, 0.0, 0
    for r in read_jsonl(run_dir / "stats.jsonl"):
        total += (r["step"] - prev) * read_json(run_dir / "config.json")["global_batch"] / r["images_per_s"]
        prev = r["step"]
        out[r["step"]] = total
    return out


def score_run(cfg: ConvergenceConfig, run_dir: Path, split: Path, judge_dir: Path, cache: dict) -> list[dict]:
    """Gate metrics of every kept checkpoint's samples (cached in RUN/convergence.json)."""
    import torch

    from echosynth.evaluate.class_fidelity import Judge, class_fidelity
    from echosynth.evaluate.features import build_extractor, run_extractor
    from echosynth.evaluate.metrics import fid, subsample
    from echosynth.evaluate.sector import sector_fidelity
    from echosynth.gen.core.checkpoint import list_checkpoints
    from echosynth.gen.data.image_sets import load_image_set
    from echosynth.gen.diffusion.synthesis import image_seeds, plan_labels, sample_images, save_grid
    from echosynth.gen.diffusion.trained import load_run

    torch.set_num_threads(1)
    key = {k: getattr(cfg, k) for k in ("per_class", "sampler", "sample_steps", "guidance")}
    path = run_dir / "convergence.json"
    done = {r["step"]: r for r in (read_json(path)["rows"] if path.is_file() and read_json(path)["key"] == key else [])}
    if "judge" not in cache:
        real, val, train = (load_image_set(split / f) for f in (f"train_{cfg.subset}.csv", "val.csv", "train.csv"))
        echo = build_extractor("echo", classifier=str(judge_dir))
        feats = {n: run_extractor(echo, s.images).astype(np.float64) for n, s in (("real", real), ("val", val))}
        m = min(len(real), len(val))
        r_idx = subsample(len(real), m, 1)
        cache.update(judge=Judge.load(judge_dir), echo=echo, real=real, val=val, train=train, feats=feats, m=m, r_idx=r_idx,
                     floor=fid(feats["real"][r_idx], feats["val"][subsample(len(val), m, 2)]))
    c = cache
    secs = wall_seconds(run_dir)
    rows = []
    for step in list_checkpoints(run_dir):
        if step in done:
            rows.append(done[step])
            continue
        loaded = load_run(run_dir, "ema", step)
        labels = plan_labels(loaded.classes, cfg.per_class)
        t0 = time.perf_counter()
        imgs = sample_images(loaded, labels, image_seeds(0, range(len(labels))), steps=cfg.sample_steps,
                             sampler=cfg.sampler, guidance=cfg.guidance, batch_size=64)
        sample_s = time.perf_counter() - t0
        views = np.array(loaded.classes)[labels]
        cf = class_fidelity(c["judge"], imgs, views, c["val"].images, c["val"].views, n_boot=200)
        sf = sector_fidelity(c["train"].images, imgs, c["val"].images)
        f = run_extractor(c["echo"], imgs).astype(np.float64)
        fid_n = fid(c["feats"]["real"][c["r_idx"]], f[subsample(len(f), c["m"], 3)])
        rows.append({"step": step, "train_seconds": secs.get(step), "sample_seconds": sample_s,
                     "ratio": cf["ratio"], "acc_syn": cf["acc_syn"], "bacc_real": cf["bacc_real"],
                     "per_class_acc": {k: v["acc_syn"] for k, v in cf["per_class"].items()},
                     "fid_at_floor_n": fid_n, "fid_floor": c["floor"], "fid_over_floor": fid_n / c["floor"],
                     "n_floor": c["m"], "outside_mean": sf["outside_mean_fake"], "outside_mean_real": sf["outside_mean_real"]})
        save_grid(run_dir / "convergence" / f"step-{step:07d}.png", imgs[np.argsort(labels, kind="stable")], cfg.per_class)
        write_json(path, {"key": key, "rows": rows})
        print(f"{run_dir.name} step {step}: ratio {cf['ratio']:.2f}, FID/floor {fid_n / c['floor']:.2f}, "
              f"outside {sf['outside_mean_fake']:.1f}/255", flush=True)
    return rows


def plot(results: dict, path: Path, gate: dict) -> None:
    """Three metrics (above-chance ratio, FID/floor, outside-sector mean) against training steps (top) and seconds (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    panels = [("ratio", "class fidelity: above-chance ratio", gate["ratio"], "≥"),
              ("fid_over_floor", "FID (judge features) / real-vs-real floor", gate["fid_over_floor"], "≤"),
              ("outside_mean", "mean outside the sector (0–255)", gate["outside_mean"], "≤")]
    for axes, x, xlabel in ((grid[0], "step", "DDPM training steps"), (grid[1], "train_seconds", "training seconds (one thread)")):
        for ax, (key, title, limit, sign) in zip(axes, panels):
            for name, v in results["variants"].items():
                rows = [r for r in v["rows"] if r[key] is not None and r[x] is not None]
                ax.plot([r[x] for r in rows], [r[key] for r in rows], marker="o", ms=3, label=name)
            ax.axhline(limit, color="k", ls="--", lw=1, label=f"demo target {sign} {limit:g}")
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(xlabel)
            if key != "ratio":
                ax.set_yscale("log")
    grid[0][0].legend(fontsize=8)
    secs = [r for v in results["variants"].values() for r in v["rows"] if r["train_seconds"]]
    if secs:
        per_step = np.median([r["train_seconds"] / r["step"] for r in secs])
        fig.suptitle(f"Demo DDPM (tiny UNet, 32 px, 100 real images); one thread ≈ {per_step:.2f} s per step here, "
                     f"sampler {results['config']['sampler']} {results['config']['sample_steps']} steps", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ConvergenceConfig, argv, description=__doc__)
    work = Path(cfg.work).resolve()
    split, judge = prepare(cfg, work)
    train_variants(cfg, work, split)
    if not cfg.score:
        print(f"trained {', '.join(cfg.variants)} under {work / 'runs'}")
        return 0
    cache: dict = {}
    results = {"variants": {}}
    for v in cfg.variants:
        results["variants"][v] = {"flags": VARIANTS[v], "rows": score_run(cfg, work / "runs" / v, split, judge, cache)}
    gate = {"ratio": 0.8, "fid_over_floor": 3.0, "outside_mean": 5.0}  # issue targets for the demo
    record = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv, "config": to_dict(cfg),
              "device": f"cpu: {cpu_name()}, {os.cpu_count()} cores",
              "load_average_1min": os.getloadavg()[0], "demo_targets": gate,
              "judge_val_balanced_accuracy": read_json(judge / "summary.json").get("val", {}).get("balanced_accuracy", {}).get("mean"),
              **results}
    write_json(cfg.out, record)
    plot(record, Path(cfg.plot), gate)
    for v, r in results["variants"].items():
        first = next((x["step"] for x in r["rows"] if x["ratio"] is not None and x["ratio"] >= gate["ratio"]
                      and x["fid_over_floor"] <= gate["fid_over_floor"] and x["outside_mean"] <= gate["outside_mean"]), None)
        print(f"{v}: first checkpoint meeting every demo target: {first}")
    print(f"wrote {cfg.out} and {cfg.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
