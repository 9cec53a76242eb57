"""The torch-fidelity backend: the same FID / KID / precision-recall through the reference implementation.

torch-fidelity is what many users trust, but it imports torchvision (which does not work beside
the CPU-only torch build) and downloads its Inception weights on first use. Where it does import
(CUDA machines with torchvision), we register our own offline extractor with it, so its numbers
and ours come from the very same features and any difference is in the metric code alone.
"""

from __future__ import annotations

import numpy as np
import torch

from echosynth.evaluate.features import Extractor
from echosynth.gen.core.config import SetupError

INSTALL_HELP = (
    "torch-fidelity cannot be imported here{why}. It needs torchvision, which does not work beside the "
    "CPU-only torch build; run `--backend torch-fidelity` on a CUDA machine with torchvision and "
    "`pip install torch-fidelity` (our offline Inception network is registered with it, so it downloads nothing), "
    "or use the default `--backend ours`.")


class BackendError(SetupError):  # a RuntimeError
    """torch-fidelity is unavailable; the message says where it works."""


def import_torch_fidelity():
    """Import torch_fidelity or raise BackendError saying why and where it works."""
    try:
        import torch_fidelity
    except Exception as e:  # ImportError, or torchvision's operator errors on CPU-only torch
        raise BackendError(INSTALL_HELP.format(why=f" ({type(e).__name__}: {e})")) from None
    return torch_fidelity


def _register(tf, extractor: Extractor) -> str:
    """Register `extractor` as a torch-fidelity feature extractor (once per process); return its name."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    name = f"echosynth-{extractor.id}"
    if name in FEATURE_EXTRACTORS_REGISTRY:
        FEATURE_EXTRACTORS_REGISTRY[name].shared = extractor
        return name

    class Wrapped(FeatureExtractorBase):
        shared: Extractor = extractor

        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            self.inner = type(self).shared

        def forward(self, x):
            # torch-fidelity hands over uint8 N×3×H×W; our extractors take gray N×1×H×W in [-1, 1]
            gray = x[:, :1].float().div(127.5).sub(1.0)
            return (self.inner(gray).float(),)

        @staticmethod
        def get_provided_features_list():
            return ("features",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "features"

        @staticmethod
        def get_default_feature_for_isc():
            return "features"

        @staticmethod
        def get_default_feature_for_fid():
            return "features"

        @staticmethod
        def get_default_feature_for_kid():
            return "features"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros([1, 3, 8, 8], dtype=torch.uint8)

    tf.register_feature_extractor(name, Wrapped)
    return name


class _Images(torch.utils.data.Dataset):
    """uint8 N×H×W images as torch-fidelity wants them: uint8 3×H×W tensors."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.images[i]).unsqueeze(0).expand(3, -1, -1).contiguous()


def torch_fidelity_metrics(extractor: Extractor, real: np.ndarray, fake: np.ndarray, *, pr_k: int = 3,
                           kid_subsets: int = 100, kid_subset_size: int = 1000, batch_size: int = 64,
                           seed: int = 0) -> dict:
    """FID, KID, precision and recall of uint8 image arrays computed by torch-fidelity with our extractor."""
    tf = import_torch_fidelity()
    from torch_fidelity.defaults import DEFAULTS

    name = _register(tf, extractor)
    wanted = {
        "input1": _Images(real), "input2": _Images(fake), "cuda": torch.cuda.is_available(),
        "batch_size": batch_size, "fid": True, "kid": True, "prc": True, "feature_extractor": name,
        "feature_layer_fid": "features", "feature_layer_kid": "features", "feature_layer_prc": "features",
        "kid_subsets": kid_subsets, "kid_subset_size": min(kid_subset_size, len(real), len(fake)),
        "prc_neighborhood": pr_k, "prc_NN_k": pr_k, "cache": False, "verbose": False, "rng_seed": seed,
        "save_cpu_ram": True,
    }
    # keyword names moved between torch-fidelity releases: pass only those this release knows
    kwargs = {k: v for k, v in wanted.items() if k in DEFAULTS}
    out = tf.calculate_metrics(**kwargs)
    return {"version": getattr(tf, "__version__", "?"),
            "fid": _get(out, "frechet_inception_distance"),
            "kid": _get(out, "kernel_inception_distance_mean"), "kid_std": _get(out, "kernel_inception_distance_std"),
            "precision": _get(out, "precision"), "recall": _get(out, "recall")}


def _get(out: dict, key: str) -> float | None:
    v = out.get(key)
    return None if v is None else float(v)
