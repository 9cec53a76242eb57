"""Image sets for evaluation: real manifests and synthetic sample directories loaded alike into memory.

An argument naming a set may be

- a manifest CSV, optionally filtered: `split/manifest.csv#split=val` or `...#split=train,subset=1000`;
- a directory holding `samples.npz` (a `gen/sample.py` sample directory) or `manifest.csv`;
- a `samples.npz` file (`images` uint8 N×H×W, `labels` indexing `classes`, optional `seeds`).

Every set becomes uint8 images (N×S×S) plus the view name, source and path of each row.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gen.data.manifest import (
    ManifestError,
    load_gray,
    parse_manifest_ref,
    read_manifest,
    sort_views,
    write_manifest,
)
from gen.io import save_npz, save_png

FORMS = ("a manifest CSV (optionally PATH.csv#split=NAME,subset=N), a sample directory holding "
         "samples.npz or manifest.csv, or a samples.npz file")


@dataclass
class ImageSet:
    """uint8 images (N×S×S) with per-row view, source, path and (synthetic sets) seed."""

    name: str
    images: np.ndarray
    views: np.ndarray  # str per row
    sources: np.ndarray  # str per row
    paths: np.ndarray  # str per row: image file, or "<npz>:<index>"
    seeds: np.ndarray | None = None
    origin: str = ""
    _fingerprint: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> int:
        """Image side in pixels."""
        return int(self.images.shape[-1])

    @property
    def classes(self) -> list[str]:
        """Views present, in canonical order."""
        return sort_views(np.unique(self.views))

    def fingerprint(self) -> str:
        """SHA-1 of the image bytes and shape: the feature-cache key for this exact set of pixels."""
        if self._fingerprint is None:
            h = hashlib.sha1(str(self.images.shape).encode())
            h.update(np.ascontiguousarray(self.images).data)
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def take(self, idx, name: str | None = None) -> ImageSet:
        """Rows `idx` as a new set."""
        idx = np.asarray(idx, dtype=np.int64)
        return ImageSet(name or self.name, self.images[idx], self.views[idx], self.sources[idx], self.paths[idx],
                        None if self.seeds is None else self.seeds[idx], self.origin)

    def of_view(self, view: str) -> np.ndarray:
        """Row indices of one view."""
        return np.flatnonzero(self.views == view)

    def describe(self) -> dict:
        """JSON summary: origin, count, size, per-view counts, fingerprint."""
        views, counts = np.unique(self.views, return_counts=True)
        return {"path": self.origin, "n": len(self), "image_size": self.size, "fingerprint": self.fingerprint(),
                "per_class": {str(v): int(c) for v, c in zip(views, counts)}}


# ----------------------------------------------------------------------------------------------
# Loading


def load_set(ref: str | os.PathLike, *, size: int | None = None, name: str | None = None,
             views: list[str] | None = None, workers: int = 8) -> ImageSet:
    """Load an image set (see the module docstring for the accepted forms), resized to `size` if given."""
    path, filters = parse_manifest_ref(ref)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; expected {FORMS}")
    if path.is_dir():
        if (path / "samples.npz").is_file() and not filters:
            path = path / "samples.npz"
        elif (path / "manifest.csv").is_file():
            path = path / "manifest.csv"
        else:
            raise FileNotFoundError(f"{path}: holds neither samples.npz nor manifest.csv; expected {FORMS}")
    if path.suffix == ".npz":
        if filters:
            raise ValueError(f"{ref}: #split/#subset filters apply to manifests, not to {path.name}")
        s = _load_npz(path, name)
    elif path.suffix == ".csv":
        s = _load_manifest(path, filters, name, size, workers)
    else:
        raise ValueError(f"{path}: unknown file type; expected {FORMS}")
    if views is not None:
        s = s.take(np.flatnonzero(np.isin(s.views, views)))
    if len(s) == 0:
        what = f" with {filters}" if filters else ""
        raise ValueError(f"{ref}: the image set is empty{what}; check the path and the split/subset filters")
    if size is not None and s.size != size:
        s.images = resize_images(s.images, size)
        s._fingerprint = None
    return s


def _load_npz(path: Path, name: str | None) -> ImageSet:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("images", "labels", "classes") if k not in z.files]
            if missing:
                raise ValueError(f"{path}: missing array(s) {', '.join(missing)}; a samples.npz holds images "
                                 "(uint8 N×H×W), labels and classes (see gen/sample.py)")
            images, labels, classes = z["images"], z["labels"].astype(np.int64), z["classes"].astype(str)
            seeds = z["seeds"].astype(np.int64) if "seeds" in z.files else None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"{path}: not a readable .npz ({e}); re-run gen/sample.py to rewrite it") from None
    except ValueError as e:
        if str(e).startswith(str(path)):
            raise  # our own message above
        raise ValueError(f"{path}: not a readable .npz ({e}); re-run gen/sample.py to rewrite it") from None
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"{path}: images must be uint8 N×H×W, got {images.dtype} {images.shape}")
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"{path}: images must be square, got {images.shape[1]}×{images.shape[2]}")
    if len(labels) != len(images) or (len(labels) and (labels.min() < 0 or labels.max() >= len(classes))):
        raise ValueError(f"{path}: labels must be one index into classes ({len(classes)}) per image")
    n = len(images)
    return ImageSet(name or path.parent.name or path.stem, images, classes[labels], np.full(n, "synthetic", dtype=object),
                    np.array([f"{path}:{i}" for i in range(n)], dtype=object), seeds, str(path))


def _load_manifest(path: Path, filters: dict[str, str], name: str | None, size: int | None, workers: int) -> ImageSet:
    m = read_manifest(path).filter(split=filters.get("split"), subset=filters.get("subset"))
    files = [str(m.root / p) for p in m.df["path"]]

    def load(f: str) -> np.ndarray:
        try:
            return load_gray(f, size)
        except (OSError, ValueError) as e:
            raise ManifestError(f"{path}: cannot read image {f} ({e})") from None

    with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL decoding releases the GIL
        images = list(pool.map(load, files))
    shapes = {im.shape for im in images}
    if len(shapes) > 1 or any(h != w for h, w in shapes):
        first = images[0].shape
        odd = next(i for i, im in enumerate(images) if im.shape != first or im.shape[0] != im.shape[1])
        raise ValueError(f"{path}: images differ in size or are not square ({first} on row 2, "
                         f"{images[odd].shape} on row {odd + 2}); pass --size N to resize them all")
    arr = np.stack(images) if images else np.zeros((0, size or 1, size or 1), np.uint8)
    seeds = pd.to_numeric(m.df["seed"], errors="coerce").fillna(-1).astype(np.int64).to_numpy() if "seed" in m.df else None
    return ImageSet(name or path.parent.name, arr, m.df["view"].astype(str).to_numpy(dtype=object),
                    m.df["source"].astype(str).to_numpy(dtype=object), np.array(files, dtype=object), seeds,
                    str(path) + (f"#{','.join(f'{k}={v}' for k, v in filters.items())}" if filters else ""))


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize (PIL, as `load_gray`) of uint8 N×H×W images to size×size."""
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC), dtype=np.uint8)
                     for im in images]) if len(images) else np.zeros((0, size, size), np.uint8)


def check_same_size(**sets: ImageSet) -> int:
    """The common image size of named sets, or a ValueError that says which differ and what to do."""
    sizes = {k: s.size for k, s in sets.items() if s is not None}
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{k} {v}×{v}" for k, v in sizes.items())
        raise ValueError(f"image sizes differ ({listing}); pass --size N to resize every set to one size")
    return next(iter(sizes.values()))


# ----------------------------------------------------------------------------------------------
# Writing a sample directory (the privacy filter's output)


def write_sample_dir(out: str | os.PathLike, s: ImageSet, source_index: np.ndarray | None = None) -> Path:
    """Write `s` as a sample directory: samples.npz, images/<class>/<index>.png and manifest.csv.

    The format is `gen/sample.py`'s, so anything that reads a synthetic set reads this one; the
    row each image had in the set it was taken from is kept as `source_index` (npz) and
    `meta_source_index` (manifest).
    """
    from gen.io import sha1_file

    out = Path(out)
    classes = s.classes
    labels = np.array([classes.index(v) for v in s.views], dtype=np.int64)
    seeds = s.seeds if s.seeds is not None else np.full(len(s), -1, dtype=np.int64)
    src = np.arange(len(s)) if source_index is None else np.asarray(source_index, dtype=np.int64)
    rel = [f"images/{s.views[i]}/{i:06d}.png" for i in range(len(s))]
    for r, im in zip(rel, s.images):
        save_png(out / r, im)
    save_npz(out / "samples.npz", images=s.images, labels=labels, seeds=seeds, classes=np.array(classes),
             source_index=src)
    df = pd.DataFrame({"path": rel, "view": list(s.views), "source": "synthetic",
                       "patient_id": [f"synthetic-{i}" for i in range(len(s))], "split": "", "frame": "",
                       "quality": "", "sha1": [sha1_file(out / r) for r in rel], "seed": seeds,
                       "meta_source_index": src})
    write_manifest(df, out / "manifest.csv")
    return out
