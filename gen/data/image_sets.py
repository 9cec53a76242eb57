"""In-memory image sets: manifests and sample directories decoded alike, for classifiers and evaluation.

A set is named by

- a manifest CSV, optionally filtered: `split/manifest.csv#split=val` or `...#split=train,subset=1000`;
- a directory holding `samples.npz` (a `gen/sample.py` sample directory) or `manifest.csv`;
- a `samples.npz` file (`images` uint8 N×H×W, `labels` indexing `classes`, optional `seeds`).

Every set becomes uint8 images (N×S×S) with integer labels indexing `classes` and the source,
patient, grade, path (and seed, video) of each row. Manifest images are decoded by one function,
`echosynth.gen.data.manifest.load_gray` (bicubic resize when `size` is given), on one thread pool. No torch
here: the evaluation scripts and the survey load sets without it.
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
from PIL import Image

from echosynth.gen.core.io import save_npz, save_png, sha1_file
from echosynth.gen.data.manifest import (
    ImageError,
    Manifest,
    ManifestError,
    load_gray,
    parse_manifest_ref,
    read_manifest,
    sort_views,
    write_manifest,
)

FORMS = ("a manifest CSV (optionally PATH.csv#split=NAME,subset=N), a sample directory holding "
         "samples.npz or manifest.csv, or a samples.npz file")


@dataclass(frozen=True)
class ManifestRef:
    """A manifest file plus optional split / nested-subset filters (`PATH.csv#split=train,subset=1000`)."""

    path: Path
    split: str | None = None
    subset: str | None = None

    @classmethod
    def parse(cls, text: str | os.PathLike) -> ManifestRef:
        """`path.csv[#split=train,subset=1000]` → ManifestRef (ValueError for a bad filter)."""
        path, kw = parse_manifest_ref(text)
        return cls(path, kw.get("split"), kw.get("subset"))

    def filters(self) -> dict[str, str]:
        """The filters that are set, in the order `#split=..,subset=..` writes them."""
        return {k: v for k, v in (("split", self.split), ("subset", self.subset)) if v is not None}


# ----------------------------------------------------------------------------------------------
# The set


@dataclass(eq=False)
class ImageSet:
    """uint8 images (N×S×S) with labels indexing `classes`, and per-row path, source, patient, grade, seed, video."""

    name: str
    images: np.ndarray
    labels: np.ndarray  # int64 index into classes
    classes: list[str]
    paths: np.ndarray  # str per row: image file, or "<npz>:<index>"
    sources: np.ndarray  # str per row
    patient_ids: np.ndarray  # str per row
    quality: np.ndarray  # float 0–10 per row, NaN where unknown
    video_ids: np.ndarray | None = None
    seeds: np.ndarray | None = None  # int per row (synthetic sets), -1 where unknown
    origin: str = ""  # what it was loaded from: PATH[#filters]
    info: dict = field(default_factory=dict)
    _fp: tuple | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_views(cls, name: str, images: np.ndarray, views, *, classes: list[str] | None = None,
                   sources=None, paths=None, patient_ids=None, quality=None, seeds=None, origin: str = "") -> ImageSet:
        """A set from per-row view names (classes: the given list, else the views present in canonical order)."""
        views = np.asarray(views, dtype=object)
        classes, labels = _labels(views, classes, origin or name)
        n = len(views)
        return cls(name, images, labels, classes,
                   _strings(paths, n, [f"{name}:{i}" for i in range(n)]), _strings(sources, n, "synthetic"),
                   _strings(patient_ids, n, [f"synthetic-{i}" for i in range(n)]),
                   np.full(n, np.nan) if quality is None else np.asarray(quality, dtype=float),
                   None, None if seeds is None else np.asarray(seeds, dtype=np.int64), origin)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def size(self) -> int:
        """Image side in pixels."""
        return int(self.images.shape[-1])

    @property
    def views(self) -> np.ndarray:
        """The view name of every row (`classes[labels]`)."""
        return np.asarray(self.classes, dtype=object)[self.labels]

    def class_counts(self) -> dict[str, int]:
        """Images per class (every class in `classes`, zeros included)."""
        n = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(k) for c, k in zip(self.classes, n)}

    def present_classes(self) -> list[int]:
        """Indices of classes with at least one image."""
        return sorted(int(c) for c in np.unique(self.labels))

    def of_view(self, view: str) -> np.ndarray:
        """Row indices of one view (none for a view outside `classes`)."""
        if view not in self.classes:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self.labels == self.classes.index(view))

    def fingerprint(self) -> str:
        """SHA-1 of the image bytes and shape: the feature-cache key for this exact set of pixels."""
        if self._fp is None or self._fp[0] is not self.images:  # recomputed when `images` is replaced
            h = hashlib.sha1(str(self.images.shape).encode())
            h.update(np.ascontiguousarray(self.images).data)
            self._fp = (self.images, h.hexdigest())
        return self._fp[1]

    def describe(self) -> dict:
        """JSON summary: origin, count, size, per-view counts (views present), fingerprint."""
        views, counts = np.unique(self.views.astype(str), return_counts=True)
        return {"path": self.origin, "n": len(self), "image_size": self.size, "fingerprint": self.fingerprint(),
                "per_class": {str(v): int(c) for v, c in zip(views, counts)}}

    def take(self, idx, name: str | None = None) -> ImageSet:
        """Rows `idx` (repeats allowed) as a new set with the same classes."""
        idx = np.asarray(idx, dtype=np.int64)
        return ImageSet(name or self.name, self.images[idx], self.labels[idx], self.classes, self.paths[idx],
                        self.sources[idx], self.patient_ids[idx], self.quality[idx],
                        None if self.video_ids is None else self.video_ids[idx],
                        None if self.seeds is None else self.seeds[idx], self.origin, dict(self.info))

    @staticmethod
    def concat(name: str, parts: list[ImageSet]) -> ImageSet:
        """Concatenate sets that share classes and image size."""
        for p in parts[1:]:
            if p.classes != parts[0].classes:
                raise ValueError(f"cannot concatenate {p.name!r} (classes {p.classes}) with {parts[0].name!r} "
                                 f"(classes {parts[0].classes}); load both with the same classes")

        def joined(attr: str, fill, dtype) -> np.ndarray | None:
            if all(getattr(p, attr) is None for p in parts):
                return None
            return np.concatenate([getattr(p, attr) if getattr(p, attr) is not None else np.full(len(p), fill, dtype=dtype)
                                   for p in parts])

        return ImageSet(name, np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                        parts[0].classes, np.concatenate([p.paths for p in parts]),
                        np.concatenate([p.sources for p in parts]), np.concatenate([p.patient_ids for p in parts]),
                        np.concatenate([p.quality for p in parts]), joined("video_ids", "", object),
                        joined("seeds", -1, np.int64))


def _strings(values, n: int, default) -> np.ndarray:
    """Per-row strings as an object array (a scalar or list default when `values` is None)."""
    if values is None:
        values = np.full(n, default, dtype=object) if isinstance(default, str) else default
    return np.asarray(values, dtype=object)


def _labels(views: np.ndarray, classes: list[str] | None, where: str,
            lines: np.ndarray | None = None) -> tuple[list[str], np.ndarray]:
    """(classes, labels): labels index the given classes, or the views present in canonical order."""
    classes = list(classes) if classes is not None else sort_views(np.unique(views.astype(str)))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(v) for v in views} - set(index))
    if unknown:
        bad = [i for i, v in enumerate(views) if v not in index][:3]
        rows = f"rows {[int(lines[i]) for i in bad]}" if lines is not None else f"images {bad}"
        raise ManifestError(f"{where}: views {unknown} are not among the classes {classes} (e.g. {rows}); "
                            "add them to the classes or drop those rows")
    return classes, np.fromiter((index[v] for v in views), dtype=np.int64, count=len(views))


# ----------------------------------------------------------------------------------------------
# Loading


def load_image_set(ref: ManifestRef | str | os.PathLike, classes: list[str] | None = None, size: int | None = None,
                   name: str | None = None, *, workers: int = 8) -> ImageSet:
    """Load an image set (see the module docstring for the accepted forms), resized to size×size if given.

    Labels index `classes` when given (classes without images stay, a row of another view is an
    error), else the views present in canonical order. `name` defaults to the CSV's stem (`val`),
    or the folder's name for a sample directory, a `samples.npz` or a `manifest.csv`.
    """
    if isinstance(ref, ManifestRef):
        path, filters = ref.path, ref.filters()
    else:
        path, filters = parse_manifest_ref(ref)
    if not path.exists():
        raise FileNotFoundError(f"{path}: manifest not found; expected {FORMS}")
    from_dir = path.is_dir()
    if from_dir:
        if (path / "samples.npz").is_file() and not filters:
            path = path / "samples.npz"
        elif (path / "manifest.csv").is_file():
            path = path / "manifest.csv"
        else:
            raise FileNotFoundError(f"{path}: holds neither samples.npz nor manifest.csv; expected {FORMS}")
    if not name:  # a split's CSV is named by its stem, a sample directory (or a data set's manifest.csv) by its folder
        name = path.stem if path.suffix == ".csv" and path.stem != "manifest" and not from_dir else path.parent.name
        name = name or path.stem
    shown = str(path) + (f"#{','.join(f'{k}={v}' for k, v in filters.items())}" if filters else "")
    if path.suffix == ".npz":
        if filters:
            raise ValueError(f"{shown}: #split/#subset filters apply to manifests, not to {path.name}")
        s = _load_npz(path, name, classes)
    elif path.suffix == ".csv":
        s = _load_manifest(path, filters, name, classes, size, workers, shown)
    else:
        raise ValueError(f"{path}: unknown file type; expected {FORMS}")
    if size is not None and s.size != size:
        s.images = resize_images(s.images, size)
    return s


def _load_npz(path: Path, name: str, classes: list[str] | None) -> ImageSet:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("images", "labels", "classes") if k not in z.files]
            if missing:
                raise ValueError(f"{path}: missing array(s) {', '.join(missing)}; a samples.npz holds images "
                                 "(uint8 N×H×W), labels and classes (see gen/sample.py)")
            images, labels, stored = z["images"], z["labels"].astype(np.int64), z["classes"].astype(str)
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
    if len(labels) != len(images) or (len(labels) and (labels.min() < 0 or labels.max() >= len(stored))):
        raise ValueError(f"{path}: labels must be one index into classes ({len(stored)}) per image")
    if len(images) == 0:
        raise ValueError(f"{path}: the image set is empty; check the path")
    n = len(images)
    return ImageSet.from_views(name, images, stored.astype(object)[labels], classes=classes,
                               paths=[f"{path}:{i}" for i in range(n)], seeds=seeds, origin=str(path))


def _load_manifest(path: Path, filters: dict[str, str], name: str, classes: list[str] | None, size: int | None,
                   workers: int, shown: str) -> ImageSet:
    m = read_manifest(path).filter(split=filters.get("split"), subset=filters.get("subset"))
    if len(m) == 0:
        raise ManifestError(f"{shown}: the image set is empty (no rows for split={filters.get('split')!r} "
                            f"subset={filters.get('subset')!r}); check the path and the split/subset filters")
    df = m.df
    classes, labels = _labels(df["view"].to_numpy(dtype=object), classes, str(path), m.lines)
    images = decode_images(m, size, workers)
    vids = None
    if "video_id" in df.columns and (df["video_id"].astype(str).str.strip() != "").any():
        vids = df["video_id"].astype(str).to_numpy(dtype=object)
    seeds = pd.to_numeric(df["seed"], errors="coerce").fillna(-1).astype(np.int64).to_numpy() if "seed" in df else None
    return ImageSet(name, images, labels, classes, np.array([str(m.root / p) for p in df["path"]], dtype=object),
                    df["source"].astype(str).to_numpy(dtype=object), df["patient_id"].astype(str).to_numpy(dtype=object),
                    df["quality"].to_numpy(dtype=float), vids, seeds, shown)


def decode_images(m: Manifest, size: int | None = None, workers: int = 8) -> np.ndarray:
    """Every row's image as uint8 N×S×S via `load_gray` (bicubic to size×size if given), on a thread pool."""
    where = m.csv or m.root

    def load(i: int) -> np.ndarray:
        f = m.root / m.df["path"].iat[i]
        row = f"{where}: row {m.line(i) or i}"
        try:
            return load_gray(f, size)
        except ImageError as e:
            raise ManifestError(f"{row}: {e}") from None
        except (OSError, ValueError) as e:
            raise ManifestError(f"{row}: cannot read image {f} ({e}); restore the file or drop the row") from None

    with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL decoding releases the GIL
        images = list(pool.map(load, range(len(m))))
    if not images:
        return np.zeros((0, size or 1, size or 1), np.uint8)
    first = images[0].shape
    odd = next((i for i, im in enumerate(images) if im.shape != first or im.shape[0] != im.shape[1]), None)
    if odd is not None:
        raise ManifestError(f"{where}: images differ in size or are not square ({first} on row {m.line(0) or 0}, "
                            f"{images[odd].shape} on row {m.line(odd) or odd}); pass --size N to resize them all")
    return np.stack(images)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize (PIL, as `load_gray`) of uint8 N×H×W images to size×size."""
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC), dtype=np.uint8)
                     for im in images]) if len(images) else np.zeros((0, size, size), np.uint8)


# ----------------------------------------------------------------------------------------------
# Writing a sample directory


def write_sample_dir(out: str | os.PathLike, s: ImageSet, source_index: np.ndarray | None = None) -> Path:
    """Write `s` as a sample directory: samples.npz, images/<class>/<index>.png and manifest.csv.

    The format is `gen/sample.py`'s, so anything that reads a synthetic set reads this one; its
    classes are the views present. The row each image had in the set it was taken from is kept
    as `source_index` (npz) and `meta_source_index` (manifest).
    """
    out = Path(out)
    views = s.views
    classes = sort_views(np.unique(views.astype(str)))
    labels = np.array([classes.index(v) for v in views], dtype=np.int64)
    seeds = s.seeds if s.seeds is not None else np.full(len(s), -1, dtype=np.int64)
    src = np.arange(len(s)) if source_index is None else np.asarray(source_index, dtype=np.int64)
    rel = [f"images/{views[i]}/{i:06d}.png" for i in range(len(s))]
    for r, im in zip(rel, s.images):
        save_png(out / r, im)
    save_npz(out / "samples.npz", images=s.images, labels=labels, seeds=seeds, classes=np.array(classes),
             source_index=src)
    df = pd.DataFrame({"path": rel, "view": list(views), "source": "synthetic",
                       "patient_id": [f"synthetic-{i}" for i in range(len(s))], "split": "", "frame": "",
                       "quality": "", "sha1": [sha1_file(out / r) for r in rel], "seed": seeds,
                       "meta_source_index": src})
    write_manifest(df, out / "manifest.csv")
    return out


def check_same_size(**sets: ImageSet) -> int:
    """The common image size of named sets, or a ValueError that says which differ and what to do."""
    sizes = {k: s.size for k, s in sets.items() if s is not None}
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{k} {v}×{v}" for k, v in sizes.items())
        raise ValueError(f"image sizes differ ({listing}); pass --size N to resize every set to one size")
    return next(iter(sizes.values()))
