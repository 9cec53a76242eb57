"""The manifest: one CSV per dataset that every stage reads and writes.

Required columns (in this order when written):

| column      | meaning                                                                  |
|-------------|--------------------------------------------------------------------------|
| path        | image file, relative to the manifest's directory                         |
| view        | view label (A2C, A4C, PLAX, PSAX, or another name from KNOWN_VIEWS)      |
| source      | where the image came from (tmed2, dynamic, lvh, camus, unity, synthetic…) |
| patient_id  | patient identifier, unique across sources (importers prefix the source)  |
| split       | train / val / test / shift (domain-shift test) or empty (not split yet)  |
| frame       | frame index within its video, or empty                                   |
| quality     | image-quality grade 0–10, or empty                                       |
| sha1        | SHA-1 of the image file's bytes                                          |

Optional columns: `video_id` (video-level evaluation), `subset` (size of the smallest nested
training subset that holds the row), `seed` (synthetic images), and any metadata an importer
keeps (prefixed `meta_`). Extra columns survive a read/write round trip.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gen.io import atomic_path

REQUIRED_COLUMNS = ("path", "view", "source", "patient_id", "split", "frame", "quality", "sha1")
VIEWS = ("A2C", "A4C", "PLAX", "PSAX")
# CACTUS keeps its parasternal short-axis variants and extra classes under their own names.
KNOWN_VIEWS = VIEWS + ("PSAV", "PSMV", "SC", "Random")
SPLITS = ("train", "val", "test", "shift", "")
_STRING_COLUMNS = ("path", "view", "source", "patient_id", "split", "sha1", "video_id")


class ManifestError(ValueError):
    """A manifest problem; the message names the manifest, the row (CSV line) and the file."""


@dataclass
class Manifest:
    """A manifest table plus the directory its relative paths resolve against."""

    df: pd.DataFrame
    root: Path

    def __len__(self) -> int:
        return len(self.df)

    def abspath(self, i: int) -> Path:
        """Absolute path of row i's image."""
        return self.root / self.df["path"].iat[i]

    def classes(self) -> list[str]:
        """Views present, in canonical order (VIEWS first, then others alphabetically)."""
        return sort_views(self.df["view"].unique())

    def filter(self, split: str | None = None, subset: int | str | None = None,
               views: list[str] | None = None, sources: list[str] | None = None) -> Manifest:
        """Rows of one split, one nested subset (rows with subset <= N), views and/or sources."""
        df = self.df
        if split is not None:
            df = df[df["split"] == split]
        if subset is not None and str(subset) not in ("", "full", "all"):
            if "subset" not in df.columns:
                raise ManifestError(f"{self.root}: manifest has no 'subset' column; run `gen/prepare.py split` first")
            n = int(subset)
            sizes = pd.to_numeric(df["subset"], errors="coerce")
            if n not in set(sizes.dropna().astype(int)):
                avail = sorted(set(sizes.dropna().astype(int)))
                raise ManifestError(f"{self.root}: no nested subset of size {n}; available: {avail}")
            df = df[sizes <= n]
        if views is not None:
            df = df[df["view"].isin(views)]
        if sources is not None:
            df = df[df["source"].isin(sources)]
        return Manifest(df.reset_index(drop=True), self.root)

    def counts(self, by: tuple[str, ...] = ("view", "source", "split")) -> pd.DataFrame:
        """Counts per combination of columns, as a tidy table."""
        return self.df.groupby(list(by), dropna=False).size().rename("count").reset_index()


def parse_manifest_ref(text: str | os.PathLike) -> tuple[Path, dict[str, str]]:
    """`PATH.csv[#split=NAME,subset=N]` → (path, filters): how CLIs name a filtered manifest."""
    path, _, opts = str(text).partition("#")
    if not path:
        raise ValueError(f"{text!r}: empty manifest path")
    filters: dict[str, str] = {}
    for item in filter(None, opts.split(",")):
        k, eq, v = item.partition("=")
        if not eq or k not in ("split", "subset"):
            raise ValueError(f"{text}: bad manifest filter {item!r}; use PATH.csv#split=NAME,subset=N")
        filters[k] = v
    return Path(path), filters


def sort_views(views) -> list[str]:
    """Canonical order: the four thesis views first, then any others alphabetically."""
    views = set(views)
    return [v for v in KNOWN_VIEWS if v in views] + sorted(views - set(KNOWN_VIEWS))


def empty_frame(extra_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """An empty manifest table with the required columns."""
    return pd.DataFrame({c: pd.Series(dtype="object") for c in REQUIRED_COLUMNS + tuple(extra_columns)})


def _row_ref(df: pd.DataFrame, i: int, path: Path) -> str:
    # CSV line numbers: line 1 is the header, so table row i sits on line i + 2.
    return f"{path}: row {i + 2} ({df['path'].iat[i] if 'path' in df.columns else '?'})"


def read_manifest(
    path: str | os.PathLike,
    *,
    check_files: bool = True,
    decode_images: bool = False,
    check_sha1: bool = False,
    extra_views: tuple[str, ...] = (),
    max_errors: int = 20,
) -> Manifest:
    """Read and validate a manifest CSV; raise ManifestError listing every problem found.

    Checks: required columns; known views and splits; quality in 0–10; duplicate paths;
    patients spanning splits; files that are missing (`check_files`), unreadable
    (`decode_images`) or whose bytes do not match `sha1` (`check_sha1`).
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    try:
        df = pd.read_csv(path, dtype={c: str for c in _STRING_COLUMNS + ("quality", "frame")}, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: not a readable CSV ({e})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {', '.join(missing)}; required: {', '.join(REQUIRED_COLUMNS)}")
    errors: list[str] = []

    allowed_views = set(KNOWN_VIEWS) | set(extra_views)
    for i in np.flatnonzero(~df["view"].isin(allowed_views)):
        errors.append(f"{_row_ref(df, i, path)}: unknown view {df['view'].iat[i]!r} (known: {', '.join(sorted(allowed_views))})")
    for i in np.flatnonzero(~df["split"].isin(SPLITS)):
        errors.append(f"{_row_ref(df, i, path)}: unknown split {df['split'].iat[i]!r} (use train, val, test, shift or empty)")
    for i in np.flatnonzero(df["path"].str.strip() == ""):
        errors.append(f"{_row_ref(df, i, path)}: empty path")

    for col, lo, hi in (("quality", 0, 10), ("frame", 0, None)):
        raw = df[col].replace("", np.nan)
        num = pd.to_numeric(raw, errors="coerce")
        bad = (raw.notna() & num.isna()) | (num < lo) | ((num > hi) if hi is not None else False)
        for i in np.flatnonzero(bad.to_numpy()):
            errors.append(f"{_row_ref(df, i, path)}: {col} {df[col].iat[i]!r} is not a number in [{lo}, {hi if hi is not None else '∞'}]")
        df[col] = num
    df["frame"] = df["frame"].astype("Int64")

    dup = df["path"].duplicated(keep="first")
    for i in np.flatnonzero(dup.to_numpy()):
        first = int(np.flatnonzero((df["path"] == df["path"].iat[i]).to_numpy())[0])
        errors.append(f"{_row_ref(df, i, path)}: duplicate path (first on row {first + 2})")

    split_sets = df[df["split"] != ""].groupby("patient_id")["split"].unique()
    for pid, splits in split_sets.items():
        if len(splits) > 1:
            rows = np.flatnonzero((df["patient_id"] == pid).to_numpy())[:3] + 2
            errors.append(f"{path}: patient {pid!r} spans splits {sorted(splits)} (rows {', '.join(map(str, rows))}...)")

    root = path.parent
    if check_files or decode_images or check_sha1:
        from gen.io import sha1_file

        for i, rel in enumerate(df["path"]):
            f = root / rel
            if not f.is_file():
                errors.append(f"{_row_ref(df, i, path)}: file not found: {f}")
                continue
            if decode_images:
                try:
                    load_gray(f)
                except Exception as e:  # any decoder failure means the file cannot be used
                    errors.append(f"{_row_ref(df, i, path)}: unreadable image {f}: {e}")
                    continue
            if check_sha1 and df["sha1"].iat[i] and sha1_file(f) != df["sha1"].iat[i]:
                errors.append(f"{_row_ref(df, i, path)}: sha1 mismatch for {f} (file changed since the manifest was written)")
            if len(errors) > max_errors:
                break
    if errors:
        more = f"\n  ... and more (first {max_errors} shown)" if len(errors) > max_errors else ""
        raise ManifestError(f"{path}: {len(errors)} problem(s):\n  " + "\n  ".join(errors[:max_errors]) + more)
    return Manifest(df, root)


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Atomically write a manifest (required columns first, then extras)."""
    path = Path(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: cannot write, missing column(s) {', '.join(missing)}")
    cols = list(REQUIRED_COLUMNS) + [c for c in df.columns if c not in REQUIRED_COLUMNS]
    with atomic_path(path) as tmp:
        df[cols].to_csv(tmp, index=False)
    return path


def rebase(df: pd.DataFrame, old_root: Path, new_root: Path) -> pd.DataFrame:
    """Rewrite relative paths so that they resolve from `new_root` instead of `old_root`."""
    df = df.copy()
    df["path"] = [os.path.relpath(Path(old_root, p).resolve(), Path(new_root).resolve()) for p in df["path"]]
    return df


def load_gray(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """Load an image as uint8 grayscale (H,W), optionally resized (bicubic) to size×size."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L")
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        return np.asarray(im, dtype=np.uint8).copy()
