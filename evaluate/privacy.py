"""Audit a synthetic set for copies of training images, filter them out, and attack the model's membership privacy.

  python evaluate/privacy.py --train split/train.csv --holdout split/val.csv --fake samples/ --out eval/privacy
  python evaluate/privacy.py --train split/train.csv --holdout split/val.csv --fake samples/ \\
      --classifier runs/00003-classify-real --run runs/00001-gen --filter samples-private --out eval/privacy

Every synthetic image gets its nearest training images in pixel space (L2 on [0, 1], and a
shift- and brightness-tolerant distance) and, with --classifier, in echo-feature space (cosine);
thresholds are calibrated on held-out real images, which are not copies (see evaluate/copy_detection.py
and docs/evaluation.md, "Privacy", for the rule). Writes OUT/privacy.json, OUT/nearest.csv,
OUT/hist_*.png, OUT/closest_pairs*.png, and with --filter the kept images as a sample directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from echosynth.evaluate.fidelity import default_holdout
from echosynth.gen.core.config import ConfigError, build, field, parse_config, to_dict
from echosynth.gen.core.io import atomic_path, write_json
from echosynth.gen.core.launcher import progress_wanted
from echosynth.gen.core.rundir import init_run_dir
from echosynth.gen.core.script import run_script, user_errors
from echosynth.gen.diffusion.settings import PRECISION_HELP, PRECISIONS

# torch, pandas and matplotlib modules are imported in the functions that use them, so --help and
# config errors answer without them

SCHEMA = "echosynth.privacy/1"


@dataclass
class PrivacyConfig:
    train: str = field("", help="training images of the diffusion model: manifest (PATH.csv[#split=train])")
    holdout: str = field("", help="held-out real images, never trained on ('' = the train manifest's val split if found)")
    fake: str = field("", help="synthetic set: sample directory, its samples.npz, or a manifest")
    out: str = field("", help="output directory")
    overwrite: bool = field(False, help="replace an existing output directory")
    filter: str = field("", help="write the synthetic images that are not flagged to this sample directory")
    classifier: str = field("", help="echo features (cosine space): classify/train.py run trained on the real train split")
    classifier_which: str = field("best", help="echo features: which checkpoint", choices=("best", "last"))
    spaces: list[str] = field(default_factory=lambda: ["pixel", "feature"], choices=("pixel", "feature"),
                              help="spaces whose DCR can flag an image ('feature' needs --classifier)")
    percentile: float = field(5.0, help="held-out images the whole rule may flag, in percent (sets the τ's)", min=0.0, max=100.0)
    carlini: bool = field(True, help="also flag by the Carlini et al. criterion d1 < alpha * mean(d1..dn)")
    alpha: float = field(0.5, help="Carlini criterion: alpha", min=0.0)
    carlini_n: int = field(50, help="Carlini criterion: number of nearest training images averaged", min=2)
    max_shift: int = field(2, help="tolerant distance: largest translation searched, in pixels", min=0, max=16)
    shift_candidates: int = field(20, help="tolerant distance: training images screened per synthetic image", min=1)
    lowres_size: int = field(16, help="tolerant distance: screening resolution in pixels", min=2)
    size: int = field(0, help="resize every set to size×size (0 = keep; sets must then match)", min=0)
    pairs: int = field(24, help="closest pairs shown in closest_pairs.png", min=0)
    run: str = field("", help="diffusion run for the membership-inference attack ('' = skip)")
    mia_step: int = field(0, help="membership attack: checkpoint step (0 = latest)", min=0)
    weights: str = field("ema", help="membership attack: the EMA or the raw model weights", choices=("ema", "model"),
                         was=("mia_weights",))
    mia_timesteps: list[int] = field(default_factory=lambda: [100], help="membership attack: diffusion timesteps")
    mia_loss: str = field("mse", help="membership attack: per-image loss", choices=("mse", "loss"))
    mia_max: int = field(1000, help="membership attack: members and non-members sampled (each)", min=2)
    batch_size: int = field(64, help="images per forward pass", min=1)
    device: str = field("auto", help="cpu, cuda, or auto")
    mixed_precision: str = field("auto", help="echo features: " + PRECISION_HELP, choices=PRECISIONS)
    cache_dir: str = field("~/.cache/echosynth/features", help="feature cache ('' disables)")
    seed: int = field(0, help="seed of the membership attack's noise and subsamples")
    progress: bool = field(True, help="progress bars (only on a terminal)")

    def validate(self) -> None:
        for key in ("out", "train", "fake"):
            if not getattr(self, key):
                raise ConfigError(f"--{key} is required")
        if not self.spaces:
            raise ConfigError("--spaces needs pixel, feature or both")


def audit(cfg: PrivacyConfig | None = None, **overrides) -> dict:
    """Run the privacy audit; write OUT/privacy.json and its figures (and the filtered set); return the result."""
    import numpy as np

    from echosynth.evaluate import copy_detection
    from echosynth.evaluate.distributed import resolve_device
    from echosynth.gen.data.image_sets import check_same_size, load_image_set, write_sample_dir

    cfg = build(PrivacyConfig, overrides=overrides) if cfg is None else cfg
    device = resolve_device(cfg.device)
    progress = cfg.progress and progress_wanted()
    holdout_ref = cfg.holdout or default_holdout(cfg.train)
    if not holdout_ref:
        raise ValueError("--holdout is required: held-out real images (never trained on) calibrate the thresholds")
    size = cfg.size or None
    sets = {"train": load_image_set(cfg.train, size=size, name="train"),
            "holdout": load_image_set(holdout_ref, size=size, name="holdout"),
            "fake": load_image_set(cfg.fake, size=size, name="fake")}
    check_same_size(**sets)
    out = Path(cfg.out)
    init_run_dir(out, to_dict(cfg), overwrite=cfg.overwrite, seed=cfg.seed,
                 inputs={k: v.origin.partition("#")[0] for k, v in sets.items()}, parents=[cfg.run] if cfg.run else None)
    train, holdout, fake = sets["train"], sets["holdout"], sets["fake"]
    notes: list[str] = []

    feats = _echo_features(cfg, sets, device, progress) if cfg.classifier else {}
    spaces = [s for s in cfg.spaces if s == "pixel" or (s == "feature" and feats)]
    if "feature" in cfg.spaces and not feats:
        notes.append("no --classifier: the echo-feature space is not used")
    kw = dict(k=cfg.carlini_n, max_shift=cfg.max_shift, shift_candidates=cfg.shift_candidates,
              lowres_size=cfg.lowres_size, device=device, progress=progress)
    nb = {name: copy_detection.nearest_records(s.images, train.images, query_feats=feats.get(name), train_feats=feats.get("train"),
                                       what=name, **kw) for name, s in (("fake", fake), ("holdout", holdout))}
    sc = {name: copy_detection.scores(v, cfg.alpha, cfg.carlini_n) for name, v in nb.items()}
    tau, q = copy_detection.calibrate(sc["holdout"], spaces, cfg.percentile, cfg.carlini)
    flags = {name: copy_detection.flag(v, tau, cfg.carlini) for name, v in sc.items()}
    hold_carlini = float(flags["holdout"].get("carlini", np.zeros(1)).mean())
    if cfg.carlini and hold_carlini > cfg.percentile / 100:
        notes.append(f"the Carlini criterion alone flags {hold_carlini:.1%} of held-out images: the τ's are 0 and "
                     "it is not selective on this data")

    result = {
        "schema": SCHEMA, "sets": {k: v.describe() for k, v in sets.items()},
        "rule": {"spaces": spaces, "combine": "any", "carlini": cfg.carlini, "alpha": cfg.alpha, "carlini_n": cfg.carlini_n,
                 "percentile": cfg.percentile, "max_shift": cfg.max_shift, "pixel_distance": "shift- and intensity-tolerant"},
        "thresholds": {**{f"tau_{k}": v for k, v in tau.items()}, "per_space_percentile": q},
        "calibration": _rates(flags["holdout"], len(holdout)),
        "flagged": {**_rates(flags["fake"], len(fake)), "per_class": _per_class(flags["fake"]["any"], fake.views)},
        "distances": {k: {"synthetic": copy_detection.summary(sc["fake"][k]), "holdout": copy_detection.summary(sc["holdout"][k])}
                      for k in sc["fake"]},
        "membership": None, "filtered": None, "notes": notes,
    }
    _write_nearest_csv(out / "nearest.csv", fake, train, nb["fake"], sc["fake"], flags["fake"])
    _figures(out, cfg, fake, train, nb["fake"], sc, tau, flags["fake"])
    if cfg.filter:
        keep = np.flatnonzero(~flags["fake"]["any"])
        write_sample_dir(cfg.filter, fake.take(keep), source_index=keep)
        result["filtered"] = {"path": str(cfg.filter), "kept": int(len(keep)), "dropped": int(len(fake) - len(keep))}
    if cfg.run:
        result["membership"] = _membership(cfg, train, holdout, device, progress, out)

    write_json(out / "privacy.json", result)
    return result


def _echo_features(cfg: PrivacyConfig, sets: dict, device: str, progress: bool) -> dict:
    from echosynth.evaluate.features import build_extractor, features_for
    from echosynth.gen.core.hardware import resolve_for

    ex = build_extractor("echo", device, resolve_for(cfg.mixed_precision, device)[0], classifier=cfg.classifier,
                         classifier_which=cfg.classifier_which)
    cache = str(Path(cfg.cache_dir).expanduser()) if cfg.cache_dir else None
    return {k: features_for(ex, s, batch_size=cfg.batch_size, device=device, cache_dir=cache, progress=progress)
            for k, s in sets.items()}


def _rates(flags: dict, n: int) -> dict:
    return {"n": n, "count": int(flags["any"].sum()), "fraction": float(flags["any"].mean()) if n else 0.0,
            "by": {k: float(v.mean()) for k, v in flags.items() if k != "any"}}


def _per_class(flagged, views) -> dict:
    import numpy as np

    return {str(v): {"n": int((views == v).sum()), "count": int(flagged[views == v].sum()),
                     "fraction": float(flagged[views == v].mean())} for v in np.unique(views)}


def _write_nearest_csv(path: Path, fake, train, nb, sc: dict, flags: dict) -> None:
    import pandas as pd

    df = pd.DataFrame({
        "index": range(len(fake)), "view": fake.views, "path": fake.paths,
        "dcr_pixel": sc["pixel"], "nn_pixel": nb.shift_idx, "nn_pixel_path": train.paths[nb.shift_idx],
        "shift_dy": nb.shift_offset[:, 0], "shift_dx": nb.shift_offset[:, 1],
        "dcr_pixel_l2": sc["pixel_l2"], "nn_pixel_l2": nb.l2_idx[:, 0], "nndr_pixel": sc["nndr_pixel"],
        "carlini_ratio": sc["carlini"]})
    if nb.feat is not None:
        df["dcr_feature"], df["nn_feature"], df["nndr_feature"] = sc["feature"], nb.feat_idx[:, 0], sc["nndr_feature"]
    for k, v in flags.items():
        df["flagged" if k == "any" else f"flag_{k}"] = v
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _figures(out: Path, cfg: PrivacyConfig, fake, train, nb, sc: dict, tau: dict, flags: dict) -> None:
    import numpy as np

    from echosynth.evaluate.plots import distance_histogram, pair_grid

    labels = {"pixel": "shift/intensity-tolerant pixel distance √(2−2ρ)", "pixel_l2": "pixel L2 distance on [0, 1]",
              "feature": "echo-feature cosine distance"}
    for k, label in labels.items():
        if k in sc["fake"]:
            distance_histogram(out / f"hist_{k}.png", sc["fake"][k], sc["holdout"][k], tau.get(k), label,
                               f"distance to the closest training image ({k})")
    for k, idx, name in (("pixel", nb.shift_idx, "closest_pairs.png"),
                         ("feature", None if nb.feat_idx is None else nb.feat_idx[:, 0], "closest_pairs_feature.png")):
        if idx is None:
            continue
        d = sc["fake"][k]
        order = np.argsort(d, kind="stable")[:cfg.pairs]
        caps = [f"#{i} {fake.views[i]} d={d[i]:.3g}{' FLAGGED' if flags['any'][i] else ''}" for i in order]
        pair_grid(out / name, fake.images[order], train.images[idx[order]], caps,
                  f"closest synthetic/train pairs ({k} distance; threshold tau = {tau.get(k, float('nan')):.3g})")


def _membership(cfg: PrivacyConfig, train, holdout, device: str, progress: bool, out: Path) -> dict:
    from echosynth.evaluate.membership import loss_threshold_attack
    from echosynth.evaluate.plots import distance_histogram
    from echosynth.gen.diffusion.trained import load_run

    run = load_run(cfg.run, weights=cfg.weights, step=cfg.mia_step or None, device=device)
    res = loss_threshold_attack(run, train, holdout, timesteps=cfg.mia_timesteps, max_images=cfg.mia_max, seed=cfg.seed,
                                loss=cfg.mia_loss, batch_size=cfg.batch_size, device=device, progress=progress)
    losses = res.pop("_losses")
    distance_histogram(out / "hist_membership.png", losses["members"], losses["nonmembers"], None,
                       f"denoising {cfg.mia_loss} at t = {cfg.mia_timesteps}", f"membership: AUC {res['auc']:.3f}")
    return res


@user_errors("privacy.py", FileExistsError, FileNotFoundError, ValueError)
def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(PrivacyConfig, argv, description=__doc__)
    r = audit(cfg)
    th = ", ".join(f"{k} {v:.4g}" for k, v in r["thresholds"].items())
    print(f"thresholds: {th}; held-out flagged {r['calibration']['fraction']:.1%}")
    print(f"synthetic flagged: {r['flagged']['count']}/{r['flagged']['n']} ({r['flagged']['fraction']:.1%}) "
          + " ".join(f"{k} {v['fraction']:.1%}" for k, v in r["flagged"]["per_class"].items()))
    if r["membership"]:
        m = r["membership"]
        print(f"membership attack: AUC {m['auc']:.3f}, TPR at 1% FPR {m['tpr_at_0.01_fpr']:.3f}")
    if r["filtered"]:
        print(f"filtered set: {r['filtered']['kept']} kept in {r['filtered']['path']}")
    print(f"wrote {Path(cfg.out) / 'privacy.json'}")
    return 0


if __name__ == "__main__":
    run_script(main)
