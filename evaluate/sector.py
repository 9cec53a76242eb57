"""Sector fidelity: is a synthetic set black outside the scan sector, as real echo frames are?

The mask is estimated from real training frames: a pixel lies outside the sector when it is at
most `black_level` (0–255) in at least `share` of the frames. The score of a set is its mean
intensity over those pixels, averaged over images, on the 0–255 scale (54.0 means 54/255). The
real reference is the same number on held-out real frames (not the frames that defined the mask,
whose value is low by construction).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BLACK_LEVEL = 10
SHARE = 0.98


def sector_mask(real_images: np.ndarray, black_level: int = BLACK_LEVEL, share: float = SHARE) -> np.ndarray:
    """Boolean S×S mask, True outside the scan sector: pixels ≤ black_level in ≥ share of the uint8 N×S×S frames."""
    if real_images.ndim != 3 or len(real_images) == 0:
        raise ValueError(f"the sector mask needs real frames N×S×S, got shape {real_images.shape}")
    return (real_images <= black_level).mean(axis=0) >= share


def outside_means(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-image mean intensity (0–255 scale, float64) over the pixels outside the sector."""
    if images.shape[1:] != mask.shape:
        raise ValueError(f"images are {images.shape[1]}×{images.shape[2]} but the sector mask is "
                         f"{mask.shape[0]}×{mask.shape[1]}; resize the sets to one size")
    if not mask.any() or len(images) == 0:
        return np.zeros(0)
    return images[:, mask].astype(np.float64).mean(axis=1)


def sector_fidelity(real_train: np.ndarray, fake: np.ndarray, real_reference: np.ndarray | None = None,
                    fake_views: Sequence[str] | None = None, *, black_level: int = BLACK_LEVEL,
                    share: float = SHARE) -> dict:
    """Mask from `real_train`; outside-sector means (0–255) of `fake` and of `real_reference` (else real_train)."""
    mask = sector_mask(real_train, black_level, share)
    ref_name = "holdout" if real_reference is not None and len(real_reference) else "train"
    ref = real_reference if ref_name == "holdout" else real_train
    out = {"black_level": int(black_level), "share": float(share), "n_mask_frames": int(len(real_train)),
           "outside_fraction": float(mask.mean()), "unit": "0-255 (value/255)", "real_reference": ref_name,
           "outside_mean_fake": None, "outside_mean_real": None, "outside_p95_fake": None, "per_class": {},
           "notes": []}
    if not mask.any():
        out["notes"].append(f"no pixel is ≤ {black_level} in {share:.0%} of the real frames: these images have "
                            "no black border, so sector fidelity does not apply")
        return out
    f, r = outside_means(fake, mask), outside_means(ref, mask)
    out.update(outside_mean_fake=float(f.mean()), outside_mean_real=float(r.mean()),
               outside_p95_fake=float(np.quantile(f, 0.95)))
    if ref_name == "train":
        out["notes"].append("no held-out real frames: the real value comes from the frames that defined the mask")
    if fake_views is not None:
        v = np.asarray(fake_views).astype(str)
        out["per_class"] = {c: float(f[v == c].mean()) for c in sorted(set(v))}
    return out
