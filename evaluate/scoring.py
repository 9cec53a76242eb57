"""Fidelity scoring: features per set, metrics overall and per class beside the real-vs-real floor, and the FID curves.

The floor answers "what would a perfect generator score here?": FID and friends are biased on
small sets, so every number is reported with the same metric between the real training images
and held-out real images, both subsampled to m = min(|train|, |held-out|), and with the fake
set subsampled to the same m against the same m training images (`fake_at_floor_n`), the
apples-to-apples comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from echosynth.evaluate.distributed import Dist
from echosynth.evaluate.features import (
    Extractor,
    check_size,
    load_cached,
    run_extractor,
    save_cached,
)
from echosynth.evaluate.metrics import (
    FeatureStats,
    all_metrics,
    fid,
    fid_from_stats,
    kid,
    subsample,
)
from echosynth.gen.data.image_sets import ImageSet
from echosynth.gen.diffusion.synthesis import image_seeds, plan_labels, sample_images
from echosynth.gen.diffusion.trained import load_run

THESIS_CURVE_SIZES = (1000, 2000, 4000, 6000, 8000, 10000, 15000, 20000, 30000, 40000, 50000)  # Fig 5.1


@dataclass
class SetFeatures:
    """Features of one image set (rows aligned with the set) and their all-reduced moments."""

    feats: np.ndarray
    stats: FeatureStats


def extract_set(extractor: Extractor, s: ImageSet, dist: Dist, *, batch_size: int = 64,
                cache_dir: str | None = None, progress: bool = False) -> SetFeatures:
    """Features of a set: from the cache, or each rank extracts its shard; moments all-reduced, rows gathered."""
    check_size(extractor, s.size, f"{s.name} images")
    feats = load_cached(cache_dir, extractor, s.fingerprint())
    if feats is None or feats.shape[0] != len(s):
        part = dist.shard(len(s))
        local = run_extractor(extractor, s.images[part], batch_size, dist.device, progress,
                              desc=f"{extractor.name} {s.name}")
        stats = dist.all_reduce_stats(FeatureStats.of(local))
        feats = dist.gather_rows(local)
        if dist.is_main:
            save_cached(cache_dir, extractor, s.fingerprint(), feats)
        return SetFeatures(feats, stats)
    return SetFeatures(feats, dist.all_reduce_stats(FeatureStats.of(feats[dist.shard(len(s))])))


def _metrics(real: np.ndarray, fake: np.ndarray, opts: dict, fid_value: float | None = None) -> dict:
    # overall, the all-reduced moments give FID without the gathered rows
    return all_metrics(real, fake, **opts, fid_value=fid_value)


def score(real: SetFeatures, fake: SetFeatures, holdout: SetFeatures | None, real_set: ImageSet,
          fake_set: ImageSet, holdout_set: ImageSet | None, *, per_class: bool, seed: int, opts: dict) -> dict:
    """Metrics overall (and per class): fake vs real, the real-vs-held-out floor and fake at the floor's n."""
    scopes: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {
        "overall": (np.arange(len(real_set)), np.arange(len(fake_set)),
                    None if holdout_set is None else np.arange(len(holdout_set)))}
    if per_class:
        for view in sorted(set(real_set.classes) | set(fake_set.classes)):
            scopes[view] = (real_set.of_view(view), fake_set.of_view(view),
                            None if holdout_set is None else holdout_set.of_view(view))
    out: dict = {"overall": None, "per_class": {}}
    for k, (scope, (ri, fi, hi)) in enumerate(scopes.items()):
        entry = _scope(real.feats[ri], fake.feats[fi], None if hi is None else holdout.feats[hi], seed + 17 * k, opts,
                       fid_value=fid_from_stats(real.stats, fake.stats) if scope == "overall" else None)
        if scope == "overall":
            out["overall"] = entry
        else:
            out["per_class"][scope] = entry
    return out


def _scope(real: np.ndarray, fake: np.ndarray, holdout: np.ndarray | None, seed: int, opts: dict,
           fid_value: float | None = None) -> dict:
    if len(real) == 0 or len(fake) == 0:
        return {"fake": None, "floor": None, "fake_at_floor_n": None,
                "notes": [f"no {'real' if len(real) == 0 else 'fake'} images in this class"]}
    entry = {"fake": _metrics(real, fake, {**opts, "seed": seed}, fid_value)}
    if holdout is None or len(holdout) == 0:
        entry.update(floor=None, fake_at_floor_n=None)
        entry["notes"] = ["no held-out real images: no floor (pass --holdout)"]
        return entry
    m = min(len(real), len(holdout))
    r = real[subsample(len(real), m, seed + 1)]
    entry["floor"] = _metrics(r, holdout[subsample(len(holdout), m, seed + 2)], {**opts, "seed": seed})
    entry["fake_at_floor_n"] = _metrics(r, fake[subsample(len(fake), m, seed + 3)], {**opts, "seed": seed})
    entry["n_floor"] = m
    return entry


# ----------------------------------------------------------------------------------------------
# Curves


def curve_sizes(n_fake: int, sizes: list[int] | tuple[int, ...] = THESIS_CURVE_SIZES) -> list[int]:
    """Sample counts for FID-vs-n: the given sizes up to n_fake plus n_fake; n/8, n/4, n/2, n below the smallest."""
    chosen = sorted({s for s in sizes if 2 <= s < n_fake} | {n_fake})
    if len(chosen) < 3:
        chosen = sorted({max(2, n_fake // d) for d in (8, 4, 2)} | {n_fake})
    return chosen


def fid_vs_samples(real: np.ndarray, fake: np.ndarray, sizes: list[int], real_n: int, seed: int) -> list[dict]:
    """FID of nested random fake subsets (one seeded permutation) against a fixed real subset of real_n."""
    ref = real[subsample(len(real), real_n, seed)]
    perm = np.random.default_rng(seed + 1).permutation(len(fake))
    return [{"n": int(n), "n_real": int(len(ref)), "fid": fid(ref, fake[perm[:n]])} for n in sizes]


def score_checkpoints(run_dir: str, steps: list[int], references: dict[str, np.ndarray], ref_views: np.ndarray,
                      extractors: dict[str, Extractor], dist: Dist, *, n: int, weights: str, sampler: str,
                      sampling_steps: int, guidance: float, batch_size: int, seed: int, kid_opts: dict,
                      progress: bool) -> tuple[dict, np.ndarray]:
    """Sample n images from each kept checkpoint (same labels and seeds for all) and score them against the reference features.

    Labels follow the reference's class proportions. Returns ({extractor: [{step, fid, kid, kid_std}]},
    a uint8 strip of the first 8 samples of every checkpoint, one row per step).
    """
    curves: dict[str, list[dict]] = {name: [] for name in extractors}
    ref_stats = {name: FeatureStats.of(f) for name, f in references.items()}
    rows = []
    for step in steps:
        run = load_run(run_dir, weights=weights, step=step, device=dist.device)
        classes = list(run.classes)
        unknown = sorted(set(np.unique(ref_views)) - set(classes))
        if unknown:
            raise ValueError(f"{run_dir}: the reference set has views {unknown} that the model was not trained on ({classes})")
        props = np.array([(ref_views == c).sum() for c in classes], dtype=float)
        counts = np.floor(props / props.sum() * n).astype(int)
        counts[np.argmax(props)] += n - counts.sum()
        labels = plan_labels(classes, counts=dict(zip(classes, counts.tolist())))
        seeds = image_seeds(seed, range(n))
        part = dist.shard(n)
        images = _sample(run, labels[part], seeds[part], sampler, sampling_steps, guidance, batch_size, dist, progress)
        rows.append(dist.gather_rows(images.reshape(len(images), -1).astype(np.float32))[:8])
        for name, ex in extractors.items():
            local = run_extractor(ex, images, batch_size, dist.device, progress, desc=f"{name} step {step}")
            stats = dist.all_reduce_stats(FeatureStats.of(local))
            feats = dist.gather_rows(local)
            k_mean, k_std, _ = kid(references[name], feats, seed=seed, **kid_opts)
            curves[name].append({"step": int(step), "n": int(n), "n_real": int(len(references[name])),
                                 "fid": fid_from_stats(ref_stats[name], stats), "kid": k_mean, "kid_std": k_std})
    size = int(np.sqrt(rows[0].shape[1])) if rows else 0
    strip = np.stack([r.reshape(-1, size, size) for r in rows]).round().astype(np.uint8) if rows else np.zeros((0,))
    return curves, strip


def _sample(run, labels, seeds, sampler, steps, guidance, batch_size, dist: Dist, progress: bool) -> np.ndarray:
    if len(labels) == 0:
        return np.zeros((0, run.image_size, run.image_size), np.uint8)
    return sample_images(run, labels, seeds, steps=steps, sampler=sampler, guidance=guidance,
                         batch_size=batch_size, device=dist.device, progress=progress)
