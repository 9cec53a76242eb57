"""The thesis preprocessing (Arevalo & Ranby 2023, §3.2 and §3.7), one testable function per step.

Images: `to_uint8` -> colour checks on the RGB frame (`flow_evidence`: colour-flow blobs by
hue, tint-free chroma and shape, so ECG traces, text, tinted grey maps and JPEG chroma are not
taken for Doppler; the thesis's `channel_max_diff` for the KS groups) -> `to_gray` -> `detect_cone` + `crop_to_cone` (drops burnt-in text, ECG
traces and colour bars outside the sector) -> `center_crop_square` -> `resize` (bicubic).
Videos add colour validation across videos (`colour_histogram` of the first frame, grouped by
two-sample KS tests in `ks_groups`) and frame selection (`select_frames`: one seeded random
frame, the dissimilar frames under an MSE-similarity quantile, or all frames).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# A pixel is "colour" when its channels differ by more than this (0–255). Video codecs smear
# chroma by a few levels around edges of gray images; Doppler and colour bars differ by 50+.
COLOUR_TOLERANCE = 30

# ----------------------------------------------------------------------------------------------
# Pixel formats


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Any numeric image as uint8: uint8 unchanged, bool ×255, others min–max scaled to 0–255."""
    a = np.asarray(image)
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    a = a.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.uint8)
    lo, hi = float(a[finite].min()), float(a[finite].max())
    if a.dtype.kind in "ui" or (lo >= 0 and hi <= 255 and hi > 1):
        lo = min(lo, 0.0)  # keep an integer image's absolute scale when it already fits 0–255
        hi = hi if hi > 255 else 255.0
    scaled = (np.where(finite, a, lo) - lo) / max(hi - lo, 1e-12) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """(H,W), (H,W,1), (H,W,3) or (H,W,4) uint8 as (H,W,3) (alpha dropped, gray repeated)."""
    a = to_uint8(image)
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=2)
    if a.ndim == 3 and a.shape[2] in (1, 3, 4):
        return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a[..., :3]
    raise ValueError(f"expected an image of shape (H,W) or (H,W,C), got {a.shape}")


def is_colour(image: np.ndarray) -> bool:
    """True when the image has colour channels that are not all equal (a gray RGB is not colour)."""
    a = np.asarray(image)
    if a.ndim == 2 or a.shape[-1] == 1:
        return False
    return bool(channel_max_diff(a).max() > 0)


def to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 grayscale (H,W): ITU-R 601 luma L = 0.299 R + 0.587 G + 0.114 B (PIL's convert('L'))."""
    a = to_uint8(image)
    if a.ndim == 2:
        return a
    if a.ndim == 3 and a.shape[2] == 1:
        return a[..., 0]
    rgb = as_rgb(a).astype(np.float32)
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Colour validation


def channel_max_diff(image: np.ndarray) -> np.ndarray:
    """Per-pixel max(|R−G|, |G−B|, |B−R|) as uint8 (H,W): 0 for gray pixels (thesis §3.7.1)."""
    rgb = as_rgb(image).astype(np.int16)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    d = np.maximum(np.maximum(np.abs(r - g), np.abs(g - b)), np.abs(b - r))
    return d.astype(np.uint8)


def colour_histogram(image: np.ndarray) -> np.ndarray:
    """256-bin histogram of `channel_max_diff`: the whole sample the KS test needs, in 1 KB."""
    return np.bincount(channel_max_diff(image).ravel(), minlength=256).astype(np.int64)


def colour_fraction(image: np.ndarray, mask: np.ndarray | None = None,
                    tolerance: int = COLOUR_TOLERANCE) -> float:
    """Fraction of pixels (inside `mask` if given) whose channel difference exceeds `tolerance`."""
    colour = channel_max_diff(image) > tolerance
    if mask is not None:
        if not mask.any():
            return 0.0
        return float(colour[mask].mean())
    return float(colour.mean())


def clip_colour_fraction(frames: np.ndarray, mask: np.ndarray | None = None,
                         tolerance: int = COLOUR_TOLERANCE) -> float:
    """Fraction of pixels (inside `mask`) that are colour in any frame of an RGB clip (T,H,W,3).

    Doppler jets come and go with the cardiac cycle (end-diastole may show almost none), so a
    clip is judged by the per-pixel maximum channel difference over all its frames.
    """
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    diff = channel_max_diff(frames[0])
    for f in frames[1:]:  # a running maximum: native-resolution clips are hundreds of MB
        np.maximum(diff, channel_max_diff(f), out=diff)
    colour = diff > tolerance
    if mask is not None:
        return float(colour[mask].mean()) if mask.any() else 0.0
    return float(colour.mean())


# ----------------------------------------------------------------------------------------------
# Colour-flow (Doppler) detection
#
# Scanner exports carry colour that is not flow: a green or yellow ECG trace crossing the
# sector, coloured text, a tinted grey map, and the chroma JPEG smears around all of them
# (4:2:0 subsampling spreads a 1-pixel trace over 2×2 chroma blocks, ringing leaves the
# opposite hue beside it). Flow differs in three ways the detector checks in turn: its hue
# (red/orange/yellow towards the probe, blue/cyan away; power Doppler orange/yellow), its
# chroma relative to the grey map's own tint, and its shape (filled blobs, not lines).

# Flow hues as angles (degrees) of the chroma vector (B−Y, R−Y): red 113°, orange 145°, yellow
# 170°, blue −10°, cyan −60°. Green (ECG traces, −130°) and magenta (45°, the ringing lobe
# beside a green line) lie outside.
FLOW_HUES: tuple[tuple[float, float], ...] = ((85.0, 180.0), (-180.0, -165.0), (-80.0, 25.0))
FLOW_CHROMA = 50.0  # least |(B−Y, R−Y)| of a flow pixel after the tint is removed (0–255 scale)
ANALYSIS_SIDE = 256  # frames are block-averaged to at most this long side before the analysis
FLOW_OPENING = 2  # radius (analysis pixels) of the disk that opens away lines and text strokes
FLOW_MIN_BLOB = 12  # least area (analysis pixels) of a flow blob after the opening
FLOW_SOLID = 0.5  # least share of a colour blob that survives the opening (lines keep ~0)
FLOW_MAX_FRAMES = 16  # frames of a clip analysed (evenly spaced): jets come and go with the cycle


@dataclass(frozen=True)
class FlowEvidence:
    """What the colour-flow detector found in a frame or clip."""

    fraction: float  # flow-blob pixels (union over frames) / imaging-region pixels
    n_blobs: int  # flow blobs in the frame that had most
    largest: float  # the largest blob / imaging-region pixels
    hue: str  # dominant flow hue: "red", "yellow", "blue", "cyan" or "" (none)
    frames: int  # frames analysed

    def describe(self) -> str:
        """One line for excluded.csv."""
        return (f"colour flow covers {self.fraction:.3f} of the imaging region ({self.n_blobs} blob(s), "
                f"largest {self.largest:.3f}, mostly {self.hue or '-'}; {self.frames} frame(s) analysed)")


def block_mean(a: np.ndarray, side: int = ANALYSIS_SIDE) -> np.ndarray:
    """(H,W[,C]) averaged over f×f blocks, f = ceil(max(H,W)/side), as float32 (f = 1: a copy)."""
    f = max(1, -(-max(a.shape[:2]) // side))
    a = np.asarray(a, np.float32)
    if f == 1:
        return a.copy()
    h, w = (a.shape[0] // f) * f, (a.shape[1] // f) * f
    a = a[:h, :w]
    return a.reshape(h // f, f, w // f, f, *a.shape[2:]).mean(axis=(1, 3))


def imaging_region(gray: np.ndarray, threshold: float = 12.0, min_share: float = 0.3) -> np.ndarray:
    """Mask of every scan sector in a gray frame: split screens hold two or more.

    Like `detect_cone`, but it keeps each large component (>= `min_share` of the largest, and
    >= 5% of the frame), each filled (`_span_fill`), so the colour half of a split screen is
    looked at too. Falls back to the whole frame when nothing qualifies.
    """
    opening = max(3, min(gray.shape) // 50)
    mask = ndimage.binary_opening(gray > threshold, structure=np.ones((opening, opening), bool))
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.ones(gray.shape, bool)
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero((sizes >= min_share * sizes.max()) & (sizes >= 0.05 * gray.size)) + 1
    if len(keep) == 0:
        return np.ones(gray.shape, bool)
    out = np.zeros(gray.shape, bool)
    for k in keep:
        out |= _span_fill(labels == k)
    return out


def _span_fill(mask: np.ndarray) -> np.ndarray:
    """Fill each row and each column between its first and last True pixel, and intersect.

    For a convex shape (a sector) with holes (dark cavities) this equals the convex fill up to
    the boundary pixels, at a fraction of the cost of a hull (it runs on every frame analysed).
    """
    def rows(m: np.ndarray) -> np.ndarray:
        has = m.any(axis=1)
        first = np.argmax(m, axis=1)
        last = m.shape[1] - 1 - np.argmax(m[:, ::-1], axis=1)
        cols = np.arange(m.shape[1])[None, :]
        return has[:, None] & (cols >= first[:, None]) & (cols <= last[:, None])

    return rows(mask) & rows(mask.T).T


def tint_free_chroma(rgb: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chroma (B−Y, R−Y) of a float RGB frame minus the grey map's tint.

    A tinted grey map (sepia, bronze, cool) multiplies the grey by one colour, so each pixel's
    chroma is k·Y for one vector k; k is the median of (B−Y, R−Y)/Y over the imaging region's
    pixels (flow and overlays are a minority there, so they cannot move the median), and k·Y is
    subtracted: a tinted B-mode has no chroma left while flow keeps its own. Per-luma medians
    would not do: a yellow ECG trace can outnumber the tissue pixels of its own luma. Both
    planes are median-filtered (3×3) first, so JPEG's isolated chroma errors go.
    """
    y = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    cb = ndimage.median_filter(rgb[..., 2] - y, size=3)
    cr = ndimage.median_filter(rgb[..., 0] - y, size=3)
    # The tint is k·Y with the *filtered* luma: median(k·Y) = k·median(Y) for any k, so a pure
    # tint leaves exactly nothing even on speckle, whose luma changes from pixel to pixel.
    ym = ndimage.median_filter(y, size=3)
    sel = region & (ym > 24)
    if sel.sum() >= 64:
        kb = float(np.median(cb[sel] / ym[sel]))
        kr = float(np.median(cr[sel] / ym[sel]))
        cb -= kb * ym
        cr -= kr * ym
    return cb, cr


def flow_pixels(rgb: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Mask of colour-flow blobs in one frame at analysis scale (`rgb` float, block-averaged).

    Flow pixel: inside `region`, tint-free chroma >= FLOW_CHROMA, hue in FLOW_HUES; then a
    binary opening with a disk of radius FLOW_OPENING removes lines and strokes (an ECG trace,
    text, JPEG smear along them), and blobs smaller than FLOW_MIN_BLOB pixels are dropped.
    """
    cb, cr = tint_free_chroma(rgb, region)
    hue = np.degrees(np.arctan2(cr, cb))
    in_hue = np.zeros(hue.shape, bool)
    for lo, hi in FLOW_HUES:
        in_hue |= (hue >= lo) & (hue <= hi)
    # Holes filled: turbulence mosaics and JPEG blending of aliased colours leave grey holes.
    mask = ndimage.binary_fill_holes(region & in_hue & (np.hypot(cb, cr) >= FLOW_CHROMA))
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    r = FLOW_OPENING
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    opened = ndimage.binary_opening(mask, structure=yy ** 2 + xx ** 2 <= r * r + r)
    # A blob is kept when the opening leaves most of it: a line with one thick spot (an ECG
    # trace's R wave beside its marker, smeared by JPEG) loses nearly all of its pixels.
    whole = np.bincount(labels.ravel(), minlength=n + 1)
    core = np.bincount(labels[opened], minlength=n + 1)
    keep = (core >= FLOW_MIN_BLOB) & (core >= FLOW_SOLID * whole)
    keep[0] = False
    return opened & keep[labels]


def _hue_name(rgb: np.ndarray, mask: np.ndarray) -> str:
    if not mask.any():
        return ""
    r, g, b = (float(np.median(rgb[..., c][mask])) for c in range(3))
    if r >= b:
        return "yellow" if g > 0.6 * r else "red"
    return "cyan" if g > 0.6 * b else "blue"


def flow_evidence(frames: np.ndarray, max_frames: int = FLOW_MAX_FRAMES) -> FlowEvidence:
    """Colour-flow evidence of an RGB frame (H,W,3) or clip (T,H,W,3); see `flow_pixels`.

    A clip is judged by up to `max_frames` evenly spaced frames (flow comes and goes with the
    cardiac cycle), each analysed on its own (a union over time would turn a scrolling ECG
    trace into a filled band), and the flow masks are united.
    """
    a = np.asarray(frames)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"expected an RGB frame (H,W,3) or clip (T,H,W,3), got {a.shape}")
    picks = np.unique(np.linspace(0, len(a) - 1, min(len(a), max_frames)).round().astype(int))
    small = [block_mean(a[i]) for i in picks]
    gray = np.mean([f @ np.array([0.299, 0.587, 0.114], np.float32) for f in small], axis=0)
    region = imaging_region(gray)
    union = np.zeros(region.shape, bool)
    n_blobs, largest, best = 0, 0, None
    for f in small:
        m = flow_pixels(f, region)
        union |= m
        labels, n = ndimage.label(m)
        if n > n_blobs:  # the frame with most blobs names the hue
            n_blobs, best = n, (f, m)
        if n:
            largest = max(largest, int(np.bincount(labels.ravel())[1:].max()))
    area = max(int(region.sum()), 1)
    hue = _hue_name(*best) if best is not None else ""
    return FlowEvidence(float(union.sum() / area), n_blobs, largest / area, hue, len(picks))


def is_doppler(frames: np.ndarray, threshold: float) -> bool:
    """The direct colour-Doppler decision: flow blobs cover more than `threshold` of the region.

    `threshold` 0 disables the detector. The KS colour grouping (`ks_groups`) is the second
    stage that catches what this misses.
    """
    return threshold > 0 and flow_evidence(frames).fraction > threshold


def ks_pvalue(hist_a: np.ndarray, hist_b: np.ndarray) -> float:
    """Two-sample KS p-value of two samples given as value histograms (same bins).

    D = max_x |F_a(x) − F_b(x)| from the cumulative histograms (exactly the statistic of
    `scipy.stats.ks_2samp` on the raw values, ties included), and the p-value of scipy's
    asymptotic method: P = kstwo.sf(D, round(m·n / (m + n))) with m >= n the sample sizes.
    Equal to `ks_2samp(a, b, method="asymp").pvalue`, without expanding the samples: a frame of
    480,000 pixels costs 256 additions.
    """
    from scipy import stats  # imported here: it costs a second at start-up of every CLI call

    a = np.asarray(hist_a, dtype=np.float64)
    b = np.asarray(hist_b, dtype=np.float64)
    n1, n2 = a.sum(), b.sum()
    if n1 == 0 or n2 == 0:
        raise ValueError("KS test needs two non-empty samples")
    d = float(np.max(np.abs(np.cumsum(a) / n1 - np.cumsum(b) / n2)))
    m, n = max(n1, n2), min(n1, n2)
    return float(stats.kstwo.sf(d, np.round(m * n / (m + n))))


def ks_groups(hists: Sequence[np.ndarray], alpha: float = 0.05) -> tuple[list[int], list[int]]:
    """Group samples into distributions by two-sample KS tests (thesis §3.7.1); deterministic.

    Greedy in the given order: each sample joins the first existing group whose reference (the
    group's first sample) it does not differ from at level `alpha` (p >= alpha, p as in
    `ks_pvalue`), otherwise it starts a new group and becomes its reference. This gives the
    same groups as the thesis's iterations (reference = first unassigned video; every video the
    test does not reject joins it; the rest wait for the next iteration). Returns (group of each
    sample, reference index of each group).

    Fast form: p >= alpha  <=>  D <= kstwo.isf(alpha, n_eff), so each sample is compared with
    all references at once through their cumulative histograms; only a D within 1e-9 of the
    critical value gets its exact p-value. Thousands of groups stay cheap.
    """
    from scipy import stats

    groups: list[int] = []
    refs: list[int] = []
    ref_cdfs = np.zeros((0, 0))
    ref_sizes = np.zeros(0)
    crit: dict[float, float] = {}
    for i, h in enumerate(hists):
        h = np.asarray(h, dtype=np.float64)
        n = h.sum()
        if n == 0:
            raise ValueError(f"sample {i} is empty; the KS test needs pixels")
        cdf = np.cumsum(h) / n
        joined = None
        if refs:
            d = np.abs(ref_cdfs - cdf).max(axis=1)
            big, small = np.maximum(ref_sizes, n), np.minimum(ref_sizes, n)
            en = np.round(big * small / (big + small))
            for e in np.unique(en):
                if e not in crit:
                    crit[e] = float(stats.kstwo.isf(alpha, e)) if alpha > 0 else np.inf
            c = np.array([crit[e] for e in en])
            for g in np.flatnonzero(d <= c + 1e-9):  # in group order: the first that accepts
                if d[g] < c[g] - 1e-9 or stats.kstwo.sf(d[g], en[g]) >= alpha:
                    joined = int(g)
                    break
        if joined is None:
            refs.append(i)
            ref_cdfs = cdf[None] if len(refs) == 1 else np.vstack([ref_cdfs, cdf])
            ref_sizes = np.append(ref_sizes, n)
            joined = len(refs) - 1
        groups.append(joined)
    return groups, refs


# ----------------------------------------------------------------------------------------------
# Cone (sector) handling


def _convex_fill(mask: np.ndarray) -> np.ndarray:
    """Convex hull of a binary mask as a mask (the ultrasound sector is convex)."""
    from scipy.spatial import ConvexHull, QhullError

    ys, xs = np.nonzero(mask)
    if len(ys) < 3:
        return mask.copy()
    # Only boundary pixels can be hull vertices: far fewer points for Qhull.
    edge = mask & ~ndimage.binary_erosion(mask)
    ys, xs = np.nonzero(edge) if edge.sum() >= 3 else (ys, xs)
    # Pixel corners rather than centres so one-pixel-wide shapes keep their width.
    pts = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)]).astype(float)
    try:
        hull = ConvexHull(pts)
    except QhullError:
        return mask.copy()
    t, b, left, r = bbox(mask)  # the hull lies inside the mask's bounding box
    gy, gx = np.mgrid[t:b, left:r]
    centres = np.stack([gx.ravel() + 0.5, gy.ravel() + 0.5], 1)
    inside = np.all(centres @ hull.equations[:, :2].T + hull.equations[:, 2] <= 1e-9, axis=1)
    out = mask.copy()
    out[t:b, left:r] |= inside.reshape(b - t, r - left)
    return out


def detect_cone(frames: np.ndarray, threshold: int = 12, min_fraction: float = 0.1,
                opening: int | None = None) -> np.ndarray | None:
    """Boolean mask of the ultrasound sector, or None when no plausible sector is found.

    `frames` is one gray image (H,W) or a gray clip (T,H,W); a clip uses the per-pixel mean
    over time (a moving ECG trace averages away, the speckle of the sector does not). Steps:
    threshold (> `threshold`), a binary opening of `opening` px (default max(3, min(H,W)/50))
    that cuts thin ECG traces and text strokes, the largest connected component (text, logos
    and colour bars are separate, smaller blobs), then its convex hull (fills dark cavities
    inside the sector). Returns None if that covers less than `min_fraction` of the frame.
    """
    a = np.asarray(frames)
    img = a.mean(axis=0) if a.ndim == 3 else a
    if opening is None:
        opening = max(3, min(img.shape) // 50)
    mask = img > threshold
    if opening > 1:
        mask = ndimage.binary_opening(mask, structure=np.ones((opening, opening), bool))
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    biggest = labels == (int(np.argmax(sizes)) + 1)
    if biggest.mean() < min_fraction:
        return None
    return _convex_fill(biggest)


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a mask's True pixels, bottom/right exclusive."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return 0, mask.shape[0], 0, mask.shape[1]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def crop_to_cone(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Zero everything outside the sector mask and crop to its bounding box (None: unchanged)."""
    if mask is None:
        return image
    t, b, left, r = bbox(mask)
    out = np.where(mask[..., None] if image.ndim == 3 else mask, image, 0).astype(image.dtype)
    return out[t:b, left:r]


def center_crop_square(image: np.ndarray) -> np.ndarray:
    """The central square of side min(H, W) (thesis: centre-crop, so resizing keeps the aspect)."""
    h, w = image.shape[:2]
    s = min(h, w)
    t, left = (h - s) // 2, (w - s) // 2
    return image[t:t + s, left:left + s]


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize of a uint8 (H,W) image to size×size (PIL; unchanged if already that size)."""
    from PIL import Image

    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC), dtype=np.uint8)


def resample_isotropic(image: np.ndarray, spacing_xy: tuple[float, float]) -> np.ndarray:
    """Rescale the height so pixels are square, given (x, y) spacing (CAMUS is anisotropic)."""
    from PIL import Image

    sx, sy = (float(s) for s in spacing_xy)
    if sx <= 0 or sy <= 0 or abs(sy / sx - 1) < 1e-3:
        return image
    h, w = image.shape[:2]
    new_h = max(1, int(round(h * sy / sx)))
    return np.asarray(Image.fromarray(image).resize((w, new_h), Image.BICUBIC), dtype=np.uint8)


def finish(gray: np.ndarray, size: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Cone crop (if a mask is given), centre-crop to square and bicubic resize: the PNG array."""
    return resize(center_crop_square(crop_to_cone(gray, mask)), size)


# ----------------------------------------------------------------------------------------------
# Frame selection


def item_rng(seed: int, key: str) -> np.random.Generator:
    """A generator owned by one item (seed + a stable hash of its key), not by the process."""
    return np.random.default_rng([int(seed), zlib.crc32(key.encode("utf-8"))])


def mse_matrix(frames: np.ndarray) -> np.ndarray:
    """Pairwise mean squared error between frames (T,H,W) -> (T,T), symmetric, zero diagonal."""
    from scipy.spatial.distance import pdist, squareform

    x = np.asarray(frames, dtype=np.float64).reshape(len(frames), -1)
    # pdist, not the |a|²+|b|²−2ab product: exact, and no BLAS threads (which stalled for half
    # a second per clip on a busy two-core machine).
    return squareform(pdist(x, "sqeuclidean")) / x.shape[1]


def dissimilar_frames(frames: np.ndarray, quantile: float = 0.25) -> list[int]:
    """Frames whose similarity score lies at or below the video's `quantile` (thesis §3.7.2).

    Similarity of frame i = −(mean MSE to the other frames): a frame far from the rest of the
    clip has low similarity. Frames with similarity <= the `quantile` quantile are kept, i.e.
    the roughly `quantile` share of most dissimilar frames (at least one).
    """
    n = len(frames)
    if n <= 1:
        return list(range(n))
    sim = -mse_matrix(frames).sum(1) / (n - 1)
    keep = np.flatnonzero(sim <= np.quantile(sim, quantile))
    return keep.tolist() if len(keep) else [int(np.argmin(sim))]


def select_frames(n_frames: int, mode: str, seed: int, key: str,
                  frames: np.ndarray | None = None, quantile: float = 0.25) -> list[int]:
    """Frame indices to keep: 'random' (one, seeded per item), 'dissimilar' or 'all'."""
    if n_frames <= 0:
        return []
    if mode == "random":
        return [int(item_rng(seed, key).integers(n_frames))]
    if mode == "all":
        return list(range(n_frames))
    if mode == "dissimilar":
        if frames is None:
            raise ValueError("dissimilar frame selection needs the frames")
        return dissimilar_frames(frames, quantile)
    raise ValueError(f"unknown frame selection {mode!r}; use random, dissimilar or all")


def cap_per_group(keys: Sequence[str], groups: Sequence[str], limit: int, seed: int) -> list[bool]:
    """Keep at most `limit` items per group (e.g. TMED2 patient × view), chosen by a seeded draw.

    Items are ranked inside each group by a hash of (seed, key), so the choice does not depend on
    the input order. Returns a keep flag per item.
    """
    order = {}
    for i, (k, g) in enumerate(zip(keys, groups)):
        order.setdefault(g, []).append((zlib.crc32(f"{seed}:{k}".encode()), k, i))
    keep = [False] * len(keys)
    for members in order.values():
        for _, _, i in sorted(members)[:limit]:
            keep[i] = True
    return keep
