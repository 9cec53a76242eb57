"""A survey directory: same-view real/synthetic pairs under neutral names, and its answer key.

Layout of SURVEY_DIR (written by `build_survey`):

    survey.json       public design: survey id, pairs (id, view, two image names in random
                      order), display settings. Says nothing about which image is real.
    images/<name>.png the pair images, re-encoded from pixels (no metadata) at one common size
                      through one encoder, named by random tokens, written in a random order
                      and all given the same fixed mtime (so neither names, inode order nor
                      times tell which image of a pair is real)
    answer_key.json   PRIVATE: per pair, which image is real and where both came from.
                      Only the admin results page and `analyze.py` read it.
    build.json        the resolved build config, the input manifests' fingerprints and the
                      file-size side-channel check (`size_check`)
    responses.sqlite  created by the app (see `store.py`); PRIVATE
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from echosynth.gen.core.io import fingerprint, read_json, save_png, write_json
from echosynth.gen.data.manifest import (
    Manifest,
    ManifestError,
    inside_data,
    load_gray,
    read_manifest,
)

# Every pair image gets this mtime (2000-01-01T00:00:00Z): build order must not show.
NEUTRAL_MTIME = 946684800
# |AUC - 0.5| above this: file size alone tells real from synthetic well enough to warn.
SIZE_AUC_WARN = 0.2
SURVEY_FILE = "survey.json"
KEY_FILE = "answer_key.json"
IMAGES_DIR = "images"
DB_FILE = "responses.sqlite"


class SurveyError(ValueError):
    """A survey that cannot be built or loaded; the message says what to change."""


@dataclass(frozen=True)
class Pair:
    """One survey question: two images of the same view, in a neutral (random) order."""

    pair_id: str
    view: str
    images: tuple[str, str]


@dataclass(frozen=True)
class Survey:
    """A built survey as the participant app sees it (no answer key)."""

    root: Path
    survey_id: str
    pairs: tuple[Pair, ...]
    title: str

    def pair(self, pair_id: str) -> Pair:
        """The pair with this id."""
        for p in self.pairs:
            if p.pair_id == pair_id:
                return p
        raise KeyError(f"{self.root}: no pair {pair_id!r} in {SURVEY_FILE}")

    def image_bytes(self, name: str) -> bytes:
        """The PNG bytes of one pair image (served from bytes, never by path)."""
        if name not in {n for p in self.pairs for n in p.images}:
            raise KeyError(f"{name!r} is not an image of this survey")
        return (self.root / IMAGES_DIR / name).read_bytes()

    @property
    def db_path(self) -> Path:
        """Where the app stores responses."""
        return self.root / DB_FILE


def _token(nbytes: int = 12) -> str:
    return secrets.token_hex(nbytes)


def _split_counts(n_pairs: int, views: list[str]) -> dict[str, int]:
    base, extra = divmod(n_pairs, len(views))
    return {v: base + (1 if i < extra else 0) for i, v in enumerate(views)}


def select_pairs(real: Manifest, fake: Manifest, n_pairs: int, views: list[str],
                 seed: int) -> list[tuple[str, int, int]]:
    """Pick (view, real row, synthetic row) triples: pairs split evenly over views, no image twice."""
    rng = np.random.default_rng(seed)
    out = []
    for view, n in _split_counts(n_pairs, views).items():
        r = np.flatnonzero((real.df["view"] == view).to_numpy())
        f = np.flatnonzero((fake.df["view"] == view).to_numpy())
        if len(r) < n or len(f) < n:
            raise SurveyError(
                f"view {view}: {n} pairs need {n} real and {n} synthetic images, but the inputs hold "
                f"{len(r)} real and {len(f)} synthetic; lower --pairs, add views, or change --real_split")
        out += [(view, int(a), int(b)) for a, b in zip(rng.choice(r, n, replace=False), rng.choice(f, n, replace=False))]
    rng.shuffle(out)
    return out


def _row(m: Manifest, i: int) -> dict:
    # Provenance without absolute or outside paths: the key may travel with the results.
    row = m.df.iloc[i]
    keep = ("path", "view", "source", "patient_id", "split", "frame", "sha1", "seed")
    out = {c: (None if row[c] is None or (isinstance(row[c], float) and np.isnan(row[c])) else str(row[c]))
           for c in keep if c in m.df.columns}
    if not inside_data(m, out["path"]):
        out["path"] = Path(out["path"]).name  # an opted-in outside path: keep only the file name (and its sha1)
    return out | {"manifest": m.csv.name if m.csv else None, "manifest_line": m.line(i)}


def _image(m: Manifest, i: int, size: int | None = None) -> np.ndarray:
    """Row i's pixels, or a SurveyError naming the file and its manifest line."""
    try:
        return load_gray(m.abspath(i), size)
    except (OSError, ValueError) as e:
        raise SurveyError(f"{m.csv or m.root}: line {m.line(i)} ({m.df['path'].iat[i]}): cannot use this image ({e}); "
                          "fix or replace the file, or drop the row") from None


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann–Whitney AUC: P(pos > neg) + ½ P(pos = neg) over all (pos, neg) combinations."""
    pos, neg = np.asarray(pos, dtype=float)[:, None], np.asarray(neg, dtype=float)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def size_check(root: str | Path, key: dict[str, dict], display_px: int = 384, filter: str = "lanczos") -> dict:
    """Does PNG file size tell real from synthetic? AUC of size (real = positive), stored and as served.

    0.5 means size carries no information; near 0 or 1 means a participant who looks at file
    sizes (browser dev tools) could answer without looking at the images.
    """
    root = Path(root)
    stored = {"real": [], "synthetic": []}
    served = {"real": [], "synthetic": []}
    larger_real = 0
    for entry in key.values():
        sizes = {}
        for side in ("real", "synthetic"):
            data = (root / IMAGES_DIR / entry[side]).read_bytes()
            stored[side].append(len(data))
            served[side].append(len(upscale_png(data, display_px, filter)))
            sizes[side] = served[side][-1]
        larger_real += sizes["real"] > sizes["synthetic"]
    res = {"n_pairs": len(key),
           "auc_stored": auc(stored["real"], stored["synthetic"]),
           "auc_served": auc(served["real"], served["synthetic"]),
           "served_px": display_px, "served_filter": filter,
           "pairs_real_larger_served": int(larger_real)}
    worst = max(abs(res["auc_stored"] - 0.5), abs(res["auc_served"] - 0.5))
    res["warning"] = (
        f"PNG file size separates real from synthetic images (AUC {res['auc_served']:.2f} as served, "
        f"{res['auc_stored']:.2f} as stored; 0.5 = no information): a participant reading file sizes in the "
        "browser could tell them apart. Check that both sides have similar noise/texture, or accept and report it."
    ) if worst > SIZE_AUC_WARN else None
    return res


def build_survey(real_manifest: str | Path, fake_manifest: str | Path, out: str | Path, *,
                 n_pairs: int = 50, views: list[str] | None = None, seed: int = 0,
                 real_split: str = "train", image_size: int = 0, title: str = "",
                 config: dict | None = None, allow_outside: bool = False) -> Survey:
    """Write a survey directory (see the module docstring) and return it.

    Both manifests' SHA-1s are checked first (a changed file is refused, naming its line), and
    rows pointing outside a manifest's folder are refused unless `allow_outside`.
    """
    views = list(views or ["A4C", "PLAX"])
    out = Path(out)
    try:
        real = read_manifest(real_manifest, allow_outside=allow_outside)
        fake = read_manifest(fake_manifest, allow_outside=allow_outside)
    except ManifestError as e:
        raise SurveyError(str(e)) from None
    real = real.filter(split=real_split or None, views=views)
    human = (real.df["source"] != "synthetic").to_numpy()
    real = Manifest(real.df[human].reset_index(drop=True), real.root, real.csv, real.lines[human])
    fake = fake.filter(views=views, sources=["synthetic"])
    if len(real) == 0:
        raise SurveyError(f"{real_manifest}: no real (non-synthetic) rows in split {real_split!r} with views {views}")
    if len(fake) == 0:
        raise SurveyError(f"{fake_manifest}: no rows with source 'synthetic' and views {views}; "
                          "pass the manifest written by gen/sample.py")
    chosen = select_pairs(real, fake, n_pairs, views, seed)
    try:
        Manifest(real.df.iloc[[a for _, a, _ in chosen]].reset_index(drop=True), real.root, real.csv,
                 real.lines[[a for _, a, _ in chosen]]).verify_sha1()
        Manifest(fake.df.iloc[[b for _, _, b in chosen]].reset_index(drop=True), fake.root, fake.csv,
                 fake.lines[[b for _, _, b in chosen]]).verify_sha1()
    except ManifestError as e:
        raise SurveyError(str(e)) from None

    # One common size for both sides, so that no dimension tells the two sources apart.
    if image_size <= 0:
        sizes = [_image(real, a).shape for _, a, _ in chosen] + [_image(fake, b).shape for _, _, b in chosen]
        image_size = max(max(s) for s in sizes)
    rng = np.random.default_rng([seed, 1])
    pairs, key, images = [], {}, []
    width = max(2, len(str(len(chosen))))
    for n, (view, a, b) in enumerate(chosen, start=1):
        pair_id = f"p{n:0{width}d}"
        real_name, fake_name = f"{_token()}.png", f"{_token()}.png"
        # Both sides through the same path: decode, grayscale, resize, one PNG encoder.
        images += [(real_name, _image(real, a, image_size)), (fake_name, _image(fake, b, image_size))]
        names = [real_name, fake_name]
        if rng.random() < 0.5:
            names.reverse()
        pairs.append({"pair_id": pair_id, "view": view, "images": names})
        key[pair_id] = {"real": real_name, "synthetic": fake_name, "view": view,
                        "real_source": _row(real, a), "synthetic_source": _row(fake, b)}
    # Random write order (from the OS, not the seed) and one fixed mtime: neither the inode
    # numbers nor the times of images/ say which image of a pair was written first.
    secrets.SystemRandom().shuffle(images)
    for name, pixels in images:
        save_png(out / IMAGES_DIR / name, pixels)
    for name, _ in images:
        os.utime(out / IMAGES_DIR / name, (NEUTRAL_MTIME, NEUTRAL_MTIME))
    survey_id = _token(6)
    write_json(out / KEY_FILE, {"survey_id": survey_id, "pairs": key})
    write_json(out / "build.json", {
        "config": config or {}, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "real_manifest": {"path": str(real_manifest), "sha1": fingerprint(real_manifest)},
        "fake_manifest": {"path": str(fake_manifest), "sha1": fingerprint(fake_manifest)},
        "size_check": size_check(out, key),
    })
    write_json(out / SURVEY_FILE, {"survey_id": survey_id, "title": title or "Can you spot the real echocardiogram?",
                                   "image_size": image_size, "pairs": pairs})
    return load_survey(out)


def load_survey(root: str | Path) -> Survey:
    """Read SURVEY_DIR/survey.json (the public part) with errors that say what is missing."""
    root = Path(root)
    path = root / SURVEY_FILE
    if not path.is_file():
        raise SurveyError(f"{root}: no {SURVEY_FILE}; build the survey first with evaluate/survey/build.py")
    try:
        data = read_json(path)
        pairs = tuple(Pair(p["pair_id"], p["view"], tuple(p["images"])) for p in data["pairs"])
        survey = Survey(root, data["survey_id"], pairs, data.get("title", ""))
    except (KeyError, TypeError, ValueError) as e:
        raise SurveyError(f"{path}: not a survey file ({e}); rebuild it with evaluate/survey/build.py") from None
    missing = [n for p in pairs for n in p.images if not (root / IMAGES_DIR / n).is_file()]
    if missing:
        raise SurveyError(f"{root / IMAGES_DIR}: {len(missing)} pair image(s) missing, e.g. {missing[0]}; rebuild the survey")
    return survey


def load_key(root: str | Path) -> dict[str, dict]:
    """The private answer key: pair id -> {real, synthetic, view, real_source, synthetic_source}."""
    path = Path(root) / KEY_FILE
    if not path.is_file():
        raise SurveyError(f"{path}: answer key not found; it is written by evaluate/survey/build.py "
                          "and must stay in the survey directory for the results")
    return read_json(path)["pairs"]


# Upscaling filters for display (PIL resampling names). Lanczos (a windowed sinc, a = 3) is the
# default: sharp without the blockiness of nearest neighbour; both sides of a pair always get
# the same filter and size, so the filter cannot favour one source.
FILTERS = ("lanczos", "bicubic", "bilinear", "nearest")


def upscale_png(data: bytes, px: int, filter: str = "lanczos") -> bytes:
    """Re-encode a grayscale PNG upscaled to px×px with a named PIL filter (no metadata kept)."""
    import io

    from PIL import Image

    if filter not in FILTERS:
        raise ValueError(f"unknown filter {filter!r}; use one of {', '.join(FILTERS)}")
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("L")
        if im.size != (px, px):
            im = im.resize((px, px), getattr(Image.Resampling, filter.upper()))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return buf.getvalue()
