"""A torch Dataset over a manifest: `(image in [-1, 1] as 1×S×S float, class index)`."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from echosynth.gen.data.manifest import (
    ImageError,
    Manifest,
    ManifestError,
    load_gray,
    read_manifest,
)


class ManifestDataset(Dataset):
    """Images of a manifest (optionally one split / nested subset) at `size`×`size`.

    Labels index `classes` (default: the manifest's views in canonical order). Only paths and
    labels are held, so the dataset pickles cheaply into `num_workers > 0` loader processes;
    `preload=True` instead decodes everything once into a uint8 array (small CPU sets).
    `verify=True` checks the SHA-1 of every used row's file first and names the CSV line of each
    changed file; `allow_outside` accepts rows pointing outside the manifest's folder.
    """

    def __init__(
        self,
        manifest: str | os.PathLike | Manifest,
        *,
        size: int = 112,
        split: str | None = None,
        subset: int | str | None = None,
        classes: Sequence[str] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        preload: bool = False,
        check_files: bool = True,
        verify: bool = False,
        allow_outside: bool = False,
    ) -> None:
        m = manifest if isinstance(manifest, Manifest) else read_manifest(
            manifest, check_files=check_files, allow_outside=allow_outside)
        m = m.filter(split=split, subset=subset)
        if len(m) == 0:
            raise ManifestError(f"{m.csv or m.root}: no rows for split={split!r} subset={subset!r}")
        if verify:
            m.verify_sha1()
        self.classes = list(classes) if classes is not None else m.classes()
        unknown = sorted(set(m.df["view"]) - set(self.classes))
        if unknown:
            raise ManifestError(f"{m.root}: views {unknown} are not among the classes {self.classes}")
        self.size = size
        self.transform = transform
        self.paths = [str(m.root / p) for p in m.df["path"]]
        index = {c: i for i, c in enumerate(self.classes)}
        self.labels = np.array([index[v] for v in m.df["view"]], dtype=np.int64)
        self.manifest = m
        self._cache: np.ndarray | None = None
        if preload:
            self._cache = np.stack([self._load(p) for p in self.paths])

    def _load(self, path: str) -> np.ndarray:
        try:
            return load_gray(path, self.size)
        except ImageError as e:
            raise ManifestError(str(e)) from None
        except (OSError, ValueError) as e:
            raise ManifestError(f"{path}: cannot read image ({e})") from None

    def __len__(self) -> int:
        return len(self.paths)

    def uint8(self, i: int) -> np.ndarray:
        """Row i as uint8 (size, size)."""
        return self._cache[i] if self._cache is not None else self._load(self.paths[i])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.uint8(i)).float().div_(127.5).sub_(1.0).unsqueeze(0)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i])

    def class_counts(self) -> dict[str, int]:
        """Number of images per class."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] float images (N,1,H,W) or (N,H,W) → uint8 (N,H,W), rounding to nearest."""
    x = x.detach().float().cpu()
    if x.ndim == 4:
        x = x[:, 0]
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
