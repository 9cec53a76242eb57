"""The base of every classifier architecture: an encoder, a view head and an optional grade head.

Its own module so that the architectures (classify/models.py) and the frozen-feature baseline
(classify/frozen_features.py), which the registry in models.py builds, both import it.
"""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """An encoder (`encode`: image → penultimate vector) plus a view head and optional grade head."""

    feature_dim: int

    def __init__(self) -> None:
        super().__init__()
        self.image_size: int | None = None  # set by `build_classifier`; checked on every call
        self.grade_head: nn.Module | None = None
        self.head_dropout: nn.Module = nn.Identity()

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Penultimate activations, without the input check."""
        raise NotImplementedError

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images N×{self.in_channels}×S×S, got shape {tuple(x.shape)}")
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"this model was trained on {self.image_size}×{self.image_size} images but got "
                f"{x.shape[-2]}×{x.shape[-1]}; resize inputs to {self.image_size} px (e.g. "
                f"`ManifestDataset(..., size={self.image_size})`)")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations N×feature_dim (VGG16: 4,096-d)."""
        self._check(x)
        return self.encode(x)

    def forward(self, x: torch.Tensor, with_grade: bool = False):
        """View logits N×num_classes; with `with_grade`, also the 0–10 grade N (one encoder pass)."""
        f = self.features(x)
        logits = self.head(self.head_dropout(f))
        if not with_grade:
            return logits
        if self.grade_head is None:
            raise ValueError("this model has no grade head (it was not trained as a quality grader)")
        return logits, self.grade(f)

    def grade(self, f: torch.Tensor) -> torch.Tensor:
        """0–10 grade from penultimate features (the head predicts grade / 10)."""
        return self.grade_head(f).squeeze(1) * 10.0

    def add_grade_head(self) -> None:
        """Attach a 0–10 grade regression head on the penultimate features."""
        self.grade_head = nn.Linear(self.feature_dim, 1)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the heads (what transfer learning freezes)."""
        heads = {id(p) for m in (self.head, self.grade_head) if m is not None for p in m.parameters()}
        return [p for p in self.parameters() if id(p) not in heads]
