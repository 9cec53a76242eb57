"""Samplers × model evaluations on the `quick` generator: the gate metrics and the time per image.

  python benchmarks/sampler_sweep.py --run /work/scratch/ddpm-quick-bf16 --work /work/scratch/quick-convergence
  python benchmarks/sampler_sweep.py --run RUN --work WORK --settings ddpm:1000,dpm++2m:10,unipc:10

WORK is benchmarks/quick_convergence.py's working directory (the quick study's phantom split and its
judge). Each setting SAMPLER:EVALS samples `--per_class` images per class with the run's EMA weights
(seeds as gen/sample.py's, precision `--precision`) and scores them as the quality gate does: the
judge's above-chance ratio (with its bootstrap interval), FID in the judge's features over the
real-vs-real floor, and the mean outside the scan sector (0–255). The reference is the 1000-step
ancestral (`ddpm`) run; its 95 % bootstrap interval (resampling the synthetic images) is the band a
faster setting must reach: ratio ≥ the band's low end, FID/floor and outside mean ≤ its high end.
Seconds per image are the wall time of sampling divided by the images, on this (shared) machine,
with the load average recorded. Writes benchmarks/results/sampler_sweep.json and docs/img/sampler_sweep.png;
settings already in the JSON (same run, per_class and precision) are reused.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from echosynth.gen.core.config import field, parse_config, to_dict
from echosynth.gen.core.io import read_json, write_json
from echosynth.gen.core.launcher import cpu_flags
from echosynth.gen.core.rundir import cpu_name

# the reference (ddpm 1000) early, so that a cut-short sweep can still be judged against it
DEFAULT_SETTINGS = ["ddpm:50", "dpm++2m-sde:10", "dpm++2m:10", "dpm++2m:20", "unipc:10", "unipc:20", "ddpm:1000", "ddpm:250",
                    "dpm++2m-sde:5", "dpm++2m-sde:15", "dpm++2m-sde:20", "dpm++2m-sde:25", "dpm++2m-sde:50", "dpm++2m:5",
                    "unipc:5", "dpm++2m:15", "unipc:15", "dpm++2m:25", "unipc:25", "ddim:10", "ddim:25", "ddim:50",
                    "ddpm:25", "ddpm:100", "dpm++2m:50", "unipc:50", "ddim:100", "dpm++2m:100", "unipc:100"]


@dataclass
class SweepConfig:
    run: str = field("", help="diffusion run directory (the quick generator)")
    work: str = field("/work/scratch/quick-convergence", help="benchmarks/quick_convergence.py's working directory")
    subset: int = field(100, help="the real training subset the generator learned from", min=1)
    settings: list[str] = field(default_factory=lambda: list(DEFAULT_SETTINGS), help="SAMPLER:EVALS items")
    per_class: int = field(50, help="images per class per setting (the demo's)", min=2)
    precision: str = field("bf16", help="autocast of the UNet", choices=("no", "bf16"))
    batch_size: int = field(200, help="images per forward", min=1)
    n_boot: int = field(200, help="bootstrap resamples of the reference's interval", min=10)
    reference: str = field("ddpm:1000", help="the setting whose bootstrap interval a faster one must reach")
    threads: int = field(1, help="torch threads (1: OpenMP spinning slows small convolutions on a busy machine)", min=1)
    timing_rounds: int = field(3, help="interleaved timing rounds of a few settings against ddpm 50 fp32 (0 = none)", min=0)
    timing_images: int = field(64, help="images per timing run", min=1)
    out: str = field("benchmarks/results/sampler_sweep.json", help="output JSON")
    plot: str = field("docs/img/sampler_sweep.png", help="output plot")


def _score(c: dict, imgs: np.ndarray, views: np.ndarray) -> dict:
    from echosynth.evaluate.class_fidelity import class_fidelity
    from echosynth.evaluate.features import run_extractor
    from echosynth.evaluate.metrics import fid, subsample
    from echosynth.evaluate.sector import outside_means

    cf = class_fidelity(c["judge"], imgs, views, c["val"].images, c["val"].views, n_boot=200)
    f = run_extractor(c["echo"], imgs).astype(np.float64)
    fid_n = fid(c["real_feats"], f[subsample(len(f), c["m"], 3)])
    outside = outside_means(imgs, c["mask"])
    return {"ratio": cf["ratio"], "ratio_ci": cf["ratio_ci"], "acc_syn": cf["acc_syn"], "fid_over_floor": fid_n / c["floor"],
            "outside_mean": float(outside.mean()), "_feats": f, "_outside": outside}


def _reference_band(c: dict, ref: dict, n_boot: int) -> dict:
    """95 % bootstrap band of the reference's FID/floor and outside mean (resampled images); the ratio's from class_fidelity."""
    from echosynth.evaluate.metrics import fid

    rng = np.random.default_rng(0)
    f, o, n = ref["_feats"], ref["_outside"], len(ref["_outside"])
    fids, outs = [], []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        fids.append(fid(c["real_feats"], f[idx][: c["m"]]) / c["floor"])
        outs.append(float(o[idx].mean()))
    return {"ratio": ref["ratio_ci"], "fid_over_floor": [float(np.percentile(fids, 2.5)), float(np.percentile(fids, 97.5))],
            "outside_mean": [float(np.percentile(outs, 2.5)), float(np.percentile(outs, 97.5))]}


def _judge_rows(record: dict, c: dict, ref: dict | None, n_boot: int) -> None:
    """Mark each row within the reference's band or not, and name the fastest setting within it."""
    if ref is None:
        return
    if "reference_band" not in record:
        record["reference_band"] = _reference_band(c, ref, n_boot)
    band = record["reference_band"]
    for r in record["rows"]:
        r["within_reference"] = within(r, band)
    ok = sorted((r for r in record["rows"] if r["within_reference"]), key=lambda r: (r["evals"], r["seconds_per_image"]))
    record["fastest_within_reference"] = {k: ok[0][k] for k in ("sampler", "evals")} if ok else None


TIMED = [("ddpm", 50, "no"), ("ddpm", 50, "bf16"), ("ddpm", 25, "bf16"), ("dpm++2m-sde", 10, "no"),
         ("dpm++2m-sde", 10, "bf16"), ("dpm++2m-sde", 15, "bf16"), ("dpm++2m-sde", 20, "bf16"), ("dpm++2m", 10, "bf16")]


def time_settings(loaded, cfg: SweepConfig) -> dict:
    """Seconds per image of a few settings on `timing_images` images, interleaved rounds, ratios to ddpm 50 fp32."""
    from echosynth.gen.diffusion.synthesis import image_seeds, sample_images

    labels = np.arange(cfg.timing_images) % len(loaded.classes)
    seeds = image_seeds(0, range(len(labels)))
    per: dict[str, list[float]] = {f"{s}:{e}:{p}": [] for s, e, p in TIMED}
    for r in range(cfg.timing_rounds):
        for s, e, p in TIMED:
            t0 = time.perf_counter()
            sample_images(loaded, labels, seeds, e, s, batch_size=len(labels), precision=p)
            per[f"{s}:{e}:{p}"].append((time.perf_counter() - t0) / len(labels))
        print(f"timing round {r + 1}: " + ", ".join(f"{k} {v[-1] * 1000:.0f} ms/img" for k, v in per.items()), flush=True)
    base = per["ddpm:50:no"]
    return {k: {"seconds_per_image": float(np.median(v)),
                "speedup_vs_ddpm50_fp32": float(np.median([b / a for a, b in zip(v, base)])), "per_round": v}
            for k, v in per.items()} | {"images": cfg.timing_images, "rounds": cfg.timing_rounds,
                                        "load_average_1min": os.getloadavg()[0]}


def within(row: dict, band: dict) -> bool:
    """As good as the reference within its interval: ratio ≥ low end, FID/floor and outside mean ≤ high end."""
    return (row["ratio"] is not None and row["ratio"] >= band["ratio"][0]
            and row["fid_over_floor"] <= band["fid_over_floor"][1] and row["outside_mean"] <= band["outside_mean"][1])


def plot(record: dict, path: Path) -> None:
    """Three gate metrics and seconds per image against model evaluations, one line per sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, band = record["rows"], record.get("reference_band")
    fig, axes = plt.subplots(1, 4, figsize=(17, 4), constrained_layout=True)
    panels = [("ratio", "class fidelity: above-chance ratio"), ("fid_over_floor", "FID (judge features) / floor"),
              ("outside_mean", "mean outside the sector (0–255)")]
    for ax, (key, title) in zip(axes, panels):
        for s in sorted({r["sampler"] for r in rows}):
            rs = sorted((r for r in rows if r["sampler"] == s and r.get(key) is not None), key=lambda r: r["evals"])
            ax.plot([r["evals"] for r in rs], [r[key] for r in rs], marker="o", ms=3, label=s)
        if band and key in band:
            ax.axhspan(*band[key], color="grey", alpha=0.25, label=f"{record['reference']}: 95 % interval")
        ax.set_xscale("log")
        ax.set_xlabel("model evaluations")
        ax.set_title(title, fontsize=10)
    timed = {k: v for k, v in (record.get("timing") or {}).items() if isinstance(v, dict)}
    if timed:  # interleaved rounds: the only times fair to compare on a shared machine
        names = list(timed)
        axes[3].barh(names, [timed[k]["speedup_vs_ddpm50_fp32"] for k in names], color="tab:grey")
        axes[3].invert_yaxis()
        axes[3].set_xlabel("speed-up over ddpm:50:no (interleaved, median)")
        axes[3].set_title("sampling speed, SAMPLER:EVALS:PRECISION", fontsize=10)
        axes[3].tick_params(axis="y", labelsize=8)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"quick generator ({record['run_name']}), {record['config']['per_class']} images per class, "
                 f"UNet in {record['config']['precision']}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def load_context(work: Path, subset: int) -> dict:
    """What scoring a set needs: the judge, its echo features of the real subset and of val, the floor, the sector mask."""
    from echosynth.evaluate.class_fidelity import Judge
    from echosynth.evaluate.features import build_extractor, run_extractor
    from echosynth.evaluate.metrics import fid, subsample
    from echosynth.evaluate.sector import sector_mask
    from echosynth.gen.data.image_sets import load_image_set

    split = work / "data" / "split"
    real, val, train = (load_image_set(split / f) for f in (f"train_{subset}.csv", "val.csv", "train.csv"))
    echo = build_extractor("echo", classifier=str(work / "judge"))
    rf, vf = (run_extractor(echo, s.images).astype(np.float64) for s in (real, val))
    m = min(len(real), len(val))
    c = {"judge": Judge.load(work / "judge"), "echo": echo, "val": val, "m": m, "mask": sector_mask(train.images),
         "real_feats": rf[subsample(len(real), m, 1)]}
    c["floor"] = fid(c["real_feats"], vf[subsample(len(val), m, 2)])
    return c


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(SweepConfig, argv, description=__doc__)
    import torch

    from echosynth.gen.diffusion.synthesis import image_seeds, plan_labels, sample_images
    from echosynth.gen.diffusion.trained import load_run

    work, run = Path(cfg.work), Path(cfg.run)
    c = load_context(work, cfg.subset)
    key = {"run": str(run.resolve()), "per_class": cfg.per_class, "precision": cfg.precision}
    old = read_json(cfg.out) if Path(cfg.out).is_file() else {}
    done = {(r["sampler"], r["evals"]): r for r in old.get("rows", [])} if old.get("key") == key else {}
    loaded = load_run(run, "ema")
    labels = plan_labels(loaded.classes, cfg.per_class)
    views = np.array(loaded.classes)[labels]
    seeds = image_seeds(0, range(len(labels)))
    torch.set_flush_denormal(True)
    torch.set_num_threads(cfg.threads)
    record = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv, "config": to_dict(cfg), "key": key,
              "run_name": run.name, "checkpoint_step": loaded.step,
              "device": f"cpu: {cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads",
              "cpu_bf16_flags": sorted(f for f in cpu_flags() if "bf16" in f), "fid_floor": c["floor"], "n_floor": c["m"],
              "rows": list(done.values())}
    if done and "timing" in old:  # a run without timing rounds keeps the last measured ones
        record["timing"] = old["timing"]
    ref_path = Path(cfg.out).with_suffix(".reference.npz")  # the reference's features, to rebuild its band on a rerun
    ref = None
    ref_key = (cfg.reference.partition(":")[0], int(cfg.reference.partition(":")[2]))
    record["reference"] = cfg.reference
    if ref_key in done and ref_path.is_file():
        with np.load(ref_path) as z:
            ref = {"_feats": z["feats"], "_outside": z["outside"], "ratio_ci": done[ref_key]["ratio_ci"]}
    for item in cfg.settings:
        sampler, _, evals = item.partition(":")
        evals = int(evals)
        is_ref = (sampler, evals) == ref_key
        if (sampler, evals) in done and not (is_ref and ref is None):
            continue
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        imgs = sample_images(loaded, labels, seeds, evals, sampler, batch_size=cfg.batch_size,
                             precision=cfg.precision)
        secs = time.perf_counter() - t0
        s = _score(c, imgs, views)
        if is_ref:
            ref = s
            np.savez(ref_path, feats=s["_feats"], outside=s["_outside"])
        row = {"sampler": sampler, "evals": evals, "seconds_per_image": secs / len(labels), "load_average_1min": load0,
               **{k: v for k, v in s.items() if not k.startswith("_")}}
        record["rows"] = [r for r in record["rows"] if (r["sampler"], r["evals"]) != (sampler, evals)] + [row]
        print(f"{sampler:8s} {evals:5d} evals: ratio {s['ratio']:.2f}, FID/floor {s['fid_over_floor']:.2f}, "
              f"outside {s['outside_mean']:.2f}/255, {secs / len(labels) * 1000:.0f} ms/img (load {load0:.1f})", flush=True)
        _judge_rows(record, c, ref, cfg.n_boot)
        write_json(cfg.out, record)
        plot(record, Path(cfg.plot))
    _judge_rows(record, c, ref, cfg.n_boot)
    if cfg.timing_rounds:
        record["timing"] = time_settings(loaded, cfg)
        write_json(cfg.out, record)
    write_json(cfg.out, record)
    plot(record, Path(cfg.plot))
    print(f"wrote {cfg.out} and {cfg.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
