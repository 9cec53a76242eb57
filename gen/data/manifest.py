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

Paths must stay inside the manifest's directory: a row such as `../../etc/secret.png` or
`/home/x/y.png` is refused, so a manifest cannot pull in (and a survey cannot copy out) files
from elsewhere. A dataset that really lives elsewhere says so in `data_roots.json` beside the
manifest (`{"roots": ["../phantom"]}` — what `gen/prepare.py split` writes — or
`{"allow_outside": true}`), or the reader passes `allow_outside=True` (`--allow_outside_paths`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from echosynth.gen.core.io import atomic_path, read_json, sha1_file, write_json
from echosynth.gen.data import VIEWS

REQUIRED_COLUMNS = ("path", "view", "source", "patient_id", "split", "frame", "quality", "sha1")
# CACTUS keeps its parasternal short-axis variants and extra classes under their own names.
KNOWN_VIEWS = VIEWS + ("PSAV", "PSMV", "SC", "Random")
SPLITS = ("train", "val", "test", "shift", "")
_STRING_COLUMNS = ("path", "view", "source", "patient_id", "split", "sha1", "video_id")
DATA_ROOTS_FILE = "data_roots.json"


class ManifestError(ValueError):
    """A manifest problem; the message names the manifest, the row (CSV line) and the file."""


@dataclass
class Manifest:
    """A manifest table plus the directory its relative paths resolve against.

    `csv` and `lines` (the CSV line of every row) are kept through `filter`, so later checks
    such as `verify_sha1` can name the line of the original file.
    """

    df: pd.DataFrame
    root: Path
    csv: Path | None = None
    lines: np.ndarray | None = field(default=None, repr=False)

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
        keep = np.ones(len(df), dtype=bool)
        if split is not None:
            keep &= (df["split"] == split).to_numpy()
        if subset is not None and str(subset) not in ("", "full", "all"):
            if "subset" not in df.columns:
                raise ManifestError(f"{self.csv or self.root}: manifest has no 'subset' column; run `gen/prepare.py split` first")
            try:
                n = int(str(subset))
            except ValueError:
                raise ManifestError(f"{self.csv or self.root}: subset {subset!r} is not a whole number") from None
            sizes = pd.to_numeric(df["subset"], errors="coerce")
            avail = sorted(set(sizes[keep].dropna().astype(int)))
            if n not in avail:
                raise ManifestError(f"{self.csv or self.root}: no nested subset of size {n}; available: {avail}")
            keep &= (sizes <= n).to_numpy()
        if views is not None:
            keep &= df["view"].isin(views).to_numpy()
        if sources is not None:
            keep &= df["source"].isin(sources).to_numpy()
        lines = self.lines[keep] if self.lines is not None else None
        return Manifest(df[keep].reset_index(drop=True), self.root, self.csv, lines)

    def line(self, i: int) -> int | None:
        """CSV line of row i in the file it was read from (None for a table built in memory)."""
        return int(self.lines[i]) if self.lines is not None else None

    def verify_sha1(self, max_errors: int = 20) -> None:
        """Check every row's file against its `sha1`; raise ManifestError naming each changed row's CSV line."""
        errors = []
        where = self.csv or self.root
        for i, (rel, want) in enumerate(zip(self.df["path"], self.df["sha1"])):
            f = self.root / rel
            line = self.line(i)
            ref = f"{where}: {'line ' + str(line) if line else 'row ' + str(i)} ({rel})"
            if not want:
                errors.append(f"{ref}: no sha1 recorded, cannot verify")
            elif not f.is_file():
                errors.append(f"{ref}: file not found: {f}")
            elif sha1_file(f) != want:
                errors.append(f"{ref}: sha1 mismatch for {f} (file changed since the manifest was written)")
            if len(errors) > max_errors:
                break
        if errors:
            more = f"\n  ... and more (first {max_errors} shown)" if len(errors) > max_errors else ""
            raise ManifestError(f"{where}: {len(errors)} file(s) fail verification:\n  " + "\n  ".join(errors[:max_errors])
                                + more + "\nRe-import the data set, or restore the original files")

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


def verify_manifest(path: str | os.PathLike, split: str | None = None, subset: int | str | None = None) -> Manifest:
    """Read a manifest and check the SHA-1 of the rows one split / subset uses (ManifestError names each CSV line)."""
    m = read_manifest(path).filter(split=split, subset=subset)
    m.verify_sha1()
    return m


def _row_ref(df: pd.DataFrame, i: int, path: Path) -> str:
    # CSV line numbers: line 1 is the header, so table row i sits on line i + 2.
    return f"{path}: row {i + 2} ({df['path'].iat[i] if 'path' in df.columns else '?'})"


def data_roots(manifest_dir: str | os.PathLike) -> tuple[list[Path], bool]:
    """Directories besides its own that a manifest directory's rows may point into, and whether any place is allowed.

    Read from `data_roots.json` beside the manifest: {"roots": [DIR, ...], "allow_outside": false};
    relative DIRs resolve against the manifest's directory.
    """
    d = Path(manifest_dir)
    f = d / DATA_ROOTS_FILE
    if not f.is_file():
        return [], False
    try:
        data = read_json(f)
        roots = [Path(os.path.normpath(d / r)) for r in data.get("roots", [])]
        allow = data.get("allow_outside", False)
        if not isinstance(allow, bool):
            raise TypeError("allow_outside must be true or false")
    except (ValueError, TypeError, AttributeError) as e:
        raise ManifestError(f"{f}: not a valid {DATA_ROOTS_FILE} ({e}); expected "
                            '{"roots": ["../dataset"], "allow_outside": false}') from None
    return roots, allow


def write_data_roots(out_dir: str | os.PathLike, roots: list[Path], allow_outside: bool = False) -> Path:
    """Write OUT/data_roots.json declaring `roots` (stored relative to OUT) as places rows may point into."""
    out = Path(out_dir)
    rel = sorted({os.path.relpath(Path(r).resolve(), out.resolve()) for r in roots})
    write_json(out / DATA_ROOTS_FILE, {"roots": rel, "allow_outside": bool(allow_outside)})
    return out / DATA_ROOTS_FILE


def inside_data(m: Manifest, path: str) -> bool:
    """Whether a row path stays in the manifest's folder or a folder its data_roots.json declares."""
    root = Path(os.path.normpath(m.root.absolute()))
    return _inside(path, root, [root] + [Path(os.path.normpath(r.absolute())) for r in data_roots(m.root)[0]])


def _inside(path: str, root: Path, roots: list[Path]) -> bool:
    # Lexical: `..` and absolute paths are judged as written (symlinked data folders stay usable).
    if os.path.isabs(path):
        full = Path(os.path.normpath(path))
    else:
        norm = os.path.normpath(path)
        if not norm.startswith(".." + os.sep) and norm != "..":
            return True
        full = Path(os.path.normpath(root / path))
    return any(full == r or r in full.parents for r in roots)


def read_manifest(
    path: str | os.PathLike,
    *,
    check_files: bool = True,
    decode_images: bool = False,
    check_sha1: bool = False,
    extra_views: tuple[str, ...] = (),
    allow_outside: bool = False,
    max_errors: int = 20,
) -> Manifest:
    """Read and validate a manifest CSV; raise ManifestError listing every problem found.

    Checks: required columns; known views and splits; quality in 0–10; duplicate paths;
    patients spanning splits; paths leaving the manifest's directory (unless `allow_outside`
    or data_roots.json allows them); files that are missing (`check_files`), unreadable
    (`decode_images`) or whose bytes do not match `sha1` (`check_sha1`).
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    if path.stat().st_size == 0:
        raise ManifestError(f"{path}: the manifest is empty (0 bytes), probably from an interrupted copy; "
                            "re-create it (e.g. with gen/prepare.py) or restore it")
    try:
        df = pd.read_csv(path, dtype={c: str for c in _STRING_COLUMNS + ("quality", "frame")}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
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
    roots, allowed = data_roots(path.parent)
    outside: set[int] = set()
    if not (allow_outside or allowed):
        roots = [Path(os.path.normpath(path.parent.absolute()))] + [Path(os.path.normpath(r.absolute())) for r in roots]
        rel_root = Path(os.path.normpath(path.parent.absolute()))
        for i, p in enumerate(df["path"]):
            if p.strip() and not _inside(p, rel_root, roots):
                outside.add(i)
                errors.append(f"{_row_ref(df, i, path)}: path leaves the manifest's directory {rel_root}")
            if len(errors) > max_errors:
                break
        if outside:
            errors.append(f"{path}: keep images under {rel_root}, list their folder in {path.parent / DATA_ROOTS_FILE} "
                          '({"roots": ["../folder"]}), or pass --allow_outside_paths if this data set really lives elsewhere')

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
        for i, rel in enumerate(df["path"]):
            if i in outside:  # never touch a file the manifest may not point at
                continue
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
    return Manifest(df, root, path, np.arange(len(df)) + 2)


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


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and what to do."""


def load_gray(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """Load an image as uint8 grayscale (H,W), optionally resized (bicubic) to size×size.

    Images over Pillow's pixel limit (MAX_IMAGE_PIXELS, ~89 Mpx; a decompression bomb would
    take gigabytes to decode) are refused with ImageError instead of being decoded.
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                im = im.convert("L")
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.BICUBIC)
                return np.asarray(im, dtype=np.uint8).copy()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"{path}: refused as a possible decompression bomb ({e}); downscale the image "
                             "or drop it from the data set") from None
