"""Evaluation's checks on image sets; the sets themselves are the data layer's (gen/data/image_sets.py).

The evaluation scripts (fidelity, privacy, embed) compare sets pixel by pixel or feature by
feature, so they need one image size, which `--size N` sets.
"""

from __future__ import annotations

from echosynth.gen.data.image_sets import ImageSet


def check_same_size(**sets: ImageSet) -> int:
    """The common image size of named sets, or a ValueError that says which differ and what to do."""
    sizes = {k: s.size for k, s in sets.items() if s is not None}
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{k} {v}×{v}" for k, v in sizes.items())
        raise ValueError(f"image sizes differ ({listing}); pass --size N to resize every set to one size")
    return next(iter(sizes.values()))
