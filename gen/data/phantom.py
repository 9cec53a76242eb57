"""The procedural echo phantom: labelled B-mode frames and clips for every command and test.

Four views (A2C, A4C, PLAX, PSAX) are drawn from per-view anatomy (phantom_anatomy) that varies
per patient and, a little, per image, at a cardiac phase between end-diastole (0) and
end-systole (1). Each frame goes through an ultrasound image-formation chain (phantom_scan):
speckle from an anisotropic PSF on a polar grid, depth attenuation and time-gain compensation,
electronic noise, log compression and scan conversion into a sector with its apex at the top.
Five sources differ in acquisition style (sector, depth, gain, dynamic range, speckle size,
native resolution, overlays) and in their view mix, after the thesis datasets.

Each image also gets sampled degradations (noise, haze, rib shadow, low contrast, off-axis cut),
and its quality grade is a fixed monotone function of them (`grade`).

Everything random is drawn from generators seeded by (seed, index) for the image and
(seed, source, patient) for the patient, never from global state, so `render(item, seed)` is a
pure function: the same bytes on any number of workers.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from echosynth.gen.core.io import save_png
from echosynth.gen.data import VIEWS
from echosynth.gen.data import phantom_anatomy as anat
from echosynth.gen.data import phantom_overlay as ovl
from echosynth.gen.data import phantom_scan as scan
from echosynth.gen.data.video import write_video

DOMAIN_SHIFT_SOURCES = ("camus", "unity")
TRAINING_SOURCES = ("lvh", "dynamic", "tmed2")


@dataclass(frozen=True)
class SourceStyle:
    """How one source acquires and stores its images (scanner settings, file format, overlays)."""

    name: str
    views: tuple[str, ...]
    video: bool  # files are clips (a frame index is recorded) rather than still images
    sector_deg: float  # full opening angle of the cone
    sector_jitter_deg: int  # per-patient ± change of the opening angle (whole degrees: cached grids)
    depth_cm: float  # imaging depth: smaller = more zoomed in
    white_db: float  # echo power (dB re. echogenicity 1) shown as white: the overall gain
    dynamic_range_db: float
    gamma: float
    speckle_axial: float  # PSF sigma along the beam, in polar samples
    speckle_lateral: float  # PSF sigma across beams, in polar samples (grows with depth in cm)
    raw_hw: tuple[int, int]  # native (height, width) of a file from this source
    raw_apex: float  # apex row as a fraction of the native height
    raw_radius: float  # cone radius as a fraction of the native height
    tint: tuple[float, float, float]  # the scanner's grey map, slightly coloured on some systems
    text_rgb: tuple[int, int, int] | None  # burnt-in text colour; None = exported without overlays
    ecg_rgb: tuple[int, int, int] | None
    images_per_patient: float  # mean images per patient over all views (sets the patient count)
    max_per_patient_view: int
    quality_shift: float  # added to degradation strengths: harder acquisitions
    fps: float


SOURCES: dict[str, SourceStyle] = {
    # EchoNet-LVH: PLAX clips from a hypertrophy cohort, large DICOM-derived frames with overlays.
    "lvh": SourceStyle(
        "lvh", ("PLAX",), video=True, sector_deg=70.0, sector_jitter_deg=2, depth_cm=15.0, white_db=8.0,
        dynamic_range_db=43.0, gamma=1.0, speckle_axial=0.8, speckle_lateral=1.6, raw_hw=(600, 800),
        raw_apex=0.07, raw_radius=0.86, tint=(1.0, 1.0, 1.0), text_rgb=(220, 220, 220), ecg_rgb=(60, 220, 90),
        images_per_patient=1.0, max_per_patient_view=1, quality_shift=0.0, fps=50.0),
    # EchoNet-Dynamic: A4C clips already cropped and masked to 112×112, no overlays, wide sector.
    "dynamic": SourceStyle(
        "dynamic", ("A4C",), video=True, sector_deg=74.0, sector_jitter_deg=3, depth_cm=16.5, white_db=8.0,
        dynamic_range_db=41.0, gamma=1.0, speckle_axial=0.7, speckle_lateral=1.4, raw_hw=(112, 112),
        raw_apex=0.0, raw_radius=1.0, tint=(1.0, 1.0, 1.0), text_rgb=None, ecg_rgb=None,
        images_per_patient=1.0, max_per_patient_view=1, quality_shift=0.05, fps=50.0),
    # TMED2: still images of all four views, several per patient, older-looking coarse speckle.
    "tmed2": SourceStyle(
        "tmed2", VIEWS, video=False, sector_deg=64.0, sector_jitter_deg=2, depth_cm=14.0, white_db=7.0,
        dynamic_range_db=40.0, gamma=0.85, speckle_axial=1.0, speckle_lateral=2.0, raw_hw=(432, 576),
        raw_apex=0.09, raw_radius=0.84, tint=(0.95, 0.98, 1.0), text_rgb=(120, 220, 235), ecg_rgb=(235, 215, 80),
        images_per_patient=17707 / 1280, max_per_patient_view=15, quality_shift=0.08, fps=30.0),
    # CAMUS (domain shift): A2C/A4C exported from raw data, fine speckle, high contrast, no overlays.
    "camus": SourceStyle(
        "camus", ("A2C", "A4C"), video=True, sector_deg=72.0, sector_jitter_deg=2, depth_cm=17.0, white_db=9.0,
        dynamic_range_db=46.0, gamma=1.25, speckle_axial=0.6, speckle_lateral=1.2, raw_hw=(640, 560),
        raw_apex=0.02, raw_radius=0.93, tint=(1.0, 1.0, 1.0), text_rgb=None, ecg_rgb=None,
        images_per_patient=4.0, max_per_patient_view=2, quality_shift=0.12, fps=25.0),
    # Unity (domain shift): wide harmonic-imaging sector, coarse lateral speckle, warm grey map.
    "unity": SourceStyle(
        "unity", ("A2C", "A4C", "PLAX"), video=False, sector_deg=80.0, sector_jitter_deg=2, depth_cm=18.0,
        white_db=6.0, dynamic_range_db=41.0, gamma=0.9, speckle_axial=0.9, speckle_lateral=2.0, raw_hw=(480, 640),
        raw_apex=0.08, raw_radius=0.84, tint=(1.0, 0.95, 0.86), text_rgb=(240, 210, 90), ecg_rgb=(80, 230, 80),
        images_per_patient=1.5, max_per_patient_view=2, quality_shift=0.05, fps=40.0),
}

# Images per source and view in the thesis tables (training sources 3.1/3.2, domain shift 3.3).
DEFAULT_MIX: dict[str, dict[str, int]] = {
    "lvh": {"PLAX": 11182},
    "dynamic": {"A4C": 10026},
    "tmed2": {"A2C": 3432, "A4C": 4505, "PLAX": 7043, "PSAX": 2727},
    "camus": {"A2C": 1000, "A4C": 1000},
    "unity": {"A2C": 1029, "A4C": 3311, "PLAX": 2891},
}

# Quality grade = 10 · (1 − Σ_k w_k · d_k), d_k ∈ [0, 1] the applied strength of degradation k.
# The weights sum to 1, so the grade is a float in [0, 10], 10 = no degradation, strictly
# decreasing in every degradation.
GRADE_WEIGHTS: dict[str, float] = {"noise": 0.20, "haze": 0.20, "rib": 0.15, "contrast": 0.20, "offaxis": 0.25}
DEGRADATIONS: tuple[str, ...] = tuple(GRADE_WEIGHTS)
# How often each degradation is present at all (its strength is drawn when it is).
_PRESENCE = {"noise": 0.95, "haze": 0.8, "rib": 0.35, "contrast": 0.6, "offaxis": 0.5}


@dataclass(frozen=True)
class PhantomItem:
    """One planned phantom image: what it shows, whose it is, its quality grade (0–10 float) and phase."""

    index: int
    source: str
    view: str
    patient_id: str
    frame: int | None
    quality: float
    phase: float


# ----------------------------------------------------------------------------------------------
# Quality grade


def grade(degradations: Mapping[str, float]) -> float:
    """Quality grade 10·(1 − Σ w_k d_k) of degradation strengths d_k ∈ [0, 1] (missing ones = 0)."""
    unknown = set(degradations) - set(GRADE_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown degradations {sorted(unknown)}; valid: {list(DEGRADATIONS)}")
    s = sum(GRADE_WEIGHTS[k] * _clamp(d, 0.0, 1.0) for k, d in degradations.items())
    return 10.0 * (1.0 - s)


def _rescale_to_grade(d: dict[str, float], quality: float) -> dict[str, float]:
    """Move degradations d along a straight path (towards none or all) so that grade(d) == quality.

    The grade is linear along either path, so the step has a closed form: towards 0 for a
    better grade, towards 1 for a worse one. This keeps `PhantomItem.quality` authoritative:
    a caller may ask for the same item at another quality.
    """
    if not 0.0 <= quality <= 10.0:
        raise ValueError(f"quality must be in [0, 10], got {quality}")
    g0 = grade(d)
    if abs(g0 - quality) < 1e-9:
        return dict(d)
    wd = sum(GRADE_WEIGHTS[k] * d[k] for k in DEGRADATIONS)
    target = 1.0 - quality / 10.0
    if quality > g0:
        t = 1.0 - target / wd if wd > 0 else 1.0
        return {k: min(max(d[k] * (1.0 - t), 0.0), 1.0) for k in DEGRADATIONS}
    room = sum(GRADE_WEIGHTS[k] * (1.0 - d[k]) for k in DEGRADATIONS)
    t = (target - wd) / room if room > 0 else 0.0
    return {k: min(max(d[k] + t * (1.0 - d[k]), 0.0), 1.0) for k in DEGRADATIONS}


# ----------------------------------------------------------------------------------------------
# Patients and images: every random choice, drawn from generators keyed by ids


def _clamp(x: float, lo: float, hi: float) -> float:
    """Scalar clip (np.clip costs microseconds per call on scalars)."""
    return min(max(float(x), lo), hi)


def _key(text: str) -> int:
    """Stable 32-bit key of a string (Python's hash() is salted per process)."""
    return zlib.crc32(text.encode("utf-8"))


@dataclass(frozen=True)
class _Patient:
    heart: anat.Heart
    difficulty: float  # 0 easy – 1 hard (body habitus): scales the sampled degradations
    angle_jitter: int
    depth_factor: float
    attenuation_db_cm: float  # two-way, net of what time-gain compensation restores
    gain_db: float
    heart_rate: float
    video_frames: int
    cycle_offset: float


@lru_cache(maxsize=8192)
def _patient(source: str, patient_id: str, seed: int) -> _Patient:
    """Anatomy and acquisition traits shared by all images of one patient (memoised: pure function)."""
    st = SOURCES[source]
    rng = np.random.default_rng([seed, 101, _key(source), _key(patient_id)])
    n = rng.standard_normal(10)
    lvh = source == "lvh"  # a hypertrophy cohort: thick walls, bigger atria
    heart = anat.Heart(
        scale=_clamp(1 + 0.07 * n[0], 0.86, 1.16), rot_deg=float(6 * n[1]),
        shift_x=float(0.5 * n[2]), shift_y=float(0.4 * n[3]),
        lv_width=_clamp(1 + 0.08 * n[4], 0.8, 1.2), lv_length=_clamp(1 + 0.06 * n[5], 0.85, 1.15),
        wall_cm=float(rng.uniform(1.25, 1.9) if lvh else _clamp(0.95 + 0.12 * n[6], 0.7, 1.3)),
        rv_size=_clamp(1 + 0.1 * n[7], 0.75, 1.3),
        atria_size=_clamp((1.1 if lvh else 1.0) + 0.1 * n[8], 0.8, 1.35),
        aorta_size=_clamp(1 + 0.08 * n[9], 0.8, 1.2),
        contraction=float(rng.uniform(0.15, 0.6) if source == "dynamic" else rng.uniform(0.3, 0.6)),
    )
    return _Patient(
        heart=heart, difficulty=float(rng.beta(2.0, 2.6)),
        angle_jitter=int(rng.integers(-st.sector_jitter_deg, st.sector_jitter_deg + 1)),
        depth_factor=float(rng.uniform(0.93, 1.07)), attenuation_db_cm=float(rng.uniform(0.0, 0.5)),
        gain_db=float(rng.normal(0.0, 1.5)), heart_rate=float(rng.uniform(55, 100)),
        video_frames=int(rng.integers(48, 160)), cycle_offset=float(rng.uniform()),
    )


@dataclass(frozen=True)
class _Shot:
    """Per-image choices that do not depend on the output size."""

    cycle: float  # position in the cardiac cycle, 0 = end-diastole (R wave)
    pose: tuple[float, float, float, float]  # d rotation (deg), d x, d y (cm), scale factor
    raw_degradations: dict
    offaxis_dir: tuple[float, float, float]  # sign of rotation, sign of shift, wall-dropout angle
    ribs: tuple[tuple[float, float, float], ...]  # (centre in [-1, 1] of the sector, width, start depth fraction)


def phase_of_cycle(c: float | np.ndarray) -> float | np.ndarray:
    """Contraction phase (0 = end-diastole … 1 = end-systole) at cycle position c ∈ [0, 1).

    Systole takes the first 35 % of the cycle; diastole refills fast, rests, then the atrial kick.
    """
    xp = (0.0, 0.1, 0.25, 0.35, 0.45, 0.6, 0.85, 0.95, 1.0)
    fp = (0.0, 0.2, 0.8, 1.0, 0.7, 0.25, 0.15, 0.03, 0.0)
    out = np.interp(np.asarray(c) % 1.0, xp, fp)
    return float(out) if np.ndim(out) == 0 else out


def _bump(c: float, a: float, b: float) -> float:
    return math.sin(math.pi * (c - a) / (b - a)) ** 0.5 if a < c < b else 0.0


def valves_at(c: float) -> anat.Valves:
    """Valve openness and flow at cycle position c: aortic open in ejection, mitral in filling."""
    ao = _bump(c, 0.04, 0.34)
    mi = max(_bump(c, 0.38, 0.66), 0.8 * _bump(c, 0.83, 0.98))
    return anat.Valves(mitral=mi, aortic=ao, inflow=mi, outflow=ao)


def _video_cycle(pat: _Patient, fps: float, frame: int) -> float:
    return (frame * pat.heart_rate / (60.0 * fps) + pat.cycle_offset) % 1.0


def _shot(index: int, source: str, patient: _Patient, seed: int) -> _Shot:
    """Draw the per-image choices of image `index` (pose jitter, degradations, shadows)."""
    st = SOURCES[source]
    rng = np.random.default_rng([seed, 202, index])
    # Fixed-size vector draws (one call each): cheap, and the stream layout never shifts.
    u = rng.random(16).tolist()
    n = rng.standard_normal(4).tolist()
    b = rng.beta(1.6, 2.6, size=len(DEGRADATIONS)).tolist()
    pose = (3.0 * n[0], 0.3 * n[1], 0.25 * n[2], _clamp(1 + 0.03 * n[3], 0.92, 1.08))
    mult = 0.25 + 1.6 * patient.difficulty
    raw = {k: (_clamp(b[i] * mult + st.quality_shift, 0.0, 1.0) if u[1 + i] < _PRESENCE[k] else 0.0)
           for i, k in enumerate(DEGRADATIONS)}
    offaxis_dir = (1.0 if u[6] < 0.5 else -1.0, 1.0 if u[7] < 0.5 else -1.0, 2 * math.pi * u[8])
    ribs = tuple((-0.8 + 1.6 * u[9 + 3 * j], 0.6 + 0.8 * u[10 + 3 * j], 0.08 + 0.17 * u[11 + 3 * j])
                 for j in range(1 if u[15] < 0.5 else 2))
    return _Shot(u[0], pose, raw, offaxis_dir, ribs)


def _texture_knots(index: int, seed: int) -> dict[str, np.ndarray]:
    """Knots of the smooth random texture fields of image `index` (drawn only when rendering)."""
    rng = np.random.default_rng([seed, 203, index])
    shapes = {"bg": (6, 5), "myo": (12, 12), "peri": (5, 5), "haze": (5, 4), "fine": (28, 28)}
    return {k: rng.standard_normal(sh).astype(np.float32) for k, sh in shapes.items()}


def _item_cycle(item: PhantomItem, pat: _Patient, shot: _Shot) -> float:
    if item.frame is not None and SOURCES[item.source].video:
        return _video_cycle(pat, SOURCES[item.source].fps, item.frame)
    return shot.cycle


def make_item(index: int, source: str, view: str, patient_id: str, seed: int = 0,
              frame: int | None = None) -> PhantomItem:
    """A PhantomItem whose quality and phase are those `render` will apply (frame drawn for video sources)."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; valid: {sorted(SOURCES)}")
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; valid: {list(VIEWS)}")
    pat = _patient(source, patient_id, seed)
    shot = _shot(index, source, pat, seed)
    if frame is None and SOURCES[source].video:
        # One random frame per video, as in the thesis preprocessing.
        frame = int(np.random.default_rng([seed, 303, index]).integers(0, pat.video_frames))
    item = PhantomItem(index, source, view, patient_id, frame, grade(shot.raw_degradations), 0.0)
    return dataclasses.replace(item, phase=float(phase_of_cycle(_item_cycle(item, pat, shot))))


def degradations(item: PhantomItem, seed: int) -> dict[str, float]:
    """Degradation strengths (0–1) that `render` applies to `item`; grade(result) == item.quality."""
    pat = _patient(item.source, item.patient_id, seed)
    return _rescale_to_grade(_shot(item.index, item.source, pat, seed).raw_degradations, float(item.quality))


# ----------------------------------------------------------------------------------------------
# Planning a dataset


def allocate(n: int, mix: Mapping[str, Mapping[str, int]] | None = None) -> dict[tuple[str, str], int]:
    """Split n images over the (source, view) cells of `mix` in proportion (largest remainder).

    Every non-empty cell gets at least one image when n is at least the number of non-empty
    cells (taken from the currently largest cells).
    """
    mix = DEFAULT_MIX if mix is None else mix
    cells = []
    for source, views in mix.items():
        if source not in SOURCES:
            raise ValueError(f"mix: unknown source {source!r}; valid: {sorted(SOURCES)}")
        for view, count in views.items():
            if view not in VIEWS:
                raise ValueError(f"mix[{source!r}]: unknown view {view!r}; valid: {list(VIEWS)}")
            if not isinstance(count, (int, np.integer)) or count < 0:
                raise ValueError(f"mix[{source!r}][{view!r}] must be a non-negative integer, got {count!r}")
            if count > 0:
                cells.append(((source, view), int(count)))
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    total = sum(c for _, c in cells)
    if total == 0:
        if n:
            raise ValueError("mix has no images in any cell")
        return {}
    quotas = [n * c / total for _, c in cells]
    counts = [int(math.floor(q)) for q in quotas]
    order = sorted(range(len(cells)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    if n >= len(cells):
        for i in sorted(range(len(cells)), key=lambda i: -quotas[i]):
            if counts[i] == 0:
                donor = max(range(len(cells)), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[i] = 1
    return {cell: k for (cell, _), k in zip(cells, counts)}


def plan(n: int, seed: int = 0, mix: Mapping[str, Mapping[str, int]] | None = None) -> list[PhantomItem]:
    """A deterministic list of n phantom items over the view × source mix, in shuffled order.

    Patients: each source has about (its images) / images_per_patient patients, shared across
    views, each holding at most max_per_patient_view images of one view (TMED2: 15).
    """
    counts = allocate(n, mix)
    rng = np.random.default_rng([seed, 404])
    cells: list[tuple[str, str, str]] = []  # (source, view, patient_id) per image
    for source in SOURCES:
        views = {v: c for (s, v), c in counts.items() if s == source and c > 0}
        if not views:
            continue
        st = SOURCES[source]
        n_src = sum(views.values())
        n_pat = max(1, round(n_src / st.images_per_patient),
                    max(math.ceil(c / st.max_per_patient_view) for c in views.values()))
        for view, c in views.items():
            order = rng.permutation(n_pat)
            cells += [(source, view, f"p{order[j % n_pat]:05d}") for j in range(c)]
    perm = rng.permutation(len(cells))
    return [make_item(i, *cells[j], seed=seed) for i, j in enumerate(perm)]


# ----------------------------------------------------------------------------------------------
# Image formation


@dataclass(frozen=True)
class _Geometry:
    half_angle: int
    depth_cm: float
    n_r: int
    n_th: int


@dataclass(frozen=True)
class _Context:
    """Everything about one image that does not change from frame to frame."""

    item: PhantomItem
    style: SourceStyle
    patient: _Patient
    shot: _Shot
    degradations: dict
    heart: anat.Heart
    geo: _Geometry
    knots: dict


def _half_angle(item: PhantomItem, pat: _Patient) -> int:
    return int(round(SOURCES[item.source].sector_deg / 2)) + pat.angle_jitter


def _context(item: PhantomItem, seed: int, n_r: int, n_th: int) -> _Context:
    _check_item(item)
    st = SOURCES[item.source]
    pat = _patient(item.source, item.patient_id, seed)
    shot = _shot(item.index, item.source, pat, seed)
    d = _rescale_to_grade(shot.raw_degradations, float(item.quality))
    # Pose: patient + image jitter + the off-axis cut (rotated, shifted, foreshortened).
    h = pat.heart
    drot, dx, dy, dscale = shot.pose
    sgn_r, sgn_x, _ = shot.offaxis_dir
    off = d["offaxis"]
    heart = dataclasses.replace(
        h, rot_deg=h.rot_deg + drot + sgn_r * 18.0 * off, shift_x=h.shift_x + dx + sgn_x * 1.8 * off,
        shift_y=h.shift_y + dy, scale=h.scale * dscale, foreshorten=0.8 * off)
    geo = _Geometry(_half_angle(item, pat), st.depth_cm * pat.depth_factor, n_r, n_th)
    return _Context(item, st, pat, shot, d, heart, geo, _texture_knots(item.index, seed))


def _anatomy(ctx: _Context, cycle: float, phase: float, doppler: bool
             ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Echogenicity on the coarse grid (plus blood mask and beam velocity when Doppler is on)."""
    geo, kn, d = ctx.geo, ctx.knots, ctx.degradations
    xu, yu = scan.coarse_grid(geo.n_r, geo.n_th, geo.half_angle)
    shape = xu.shape
    depth = geo.depth_cm
    x, y = xu * np.float32(depth), yu * np.float32(depth)
    r_cm = ((np.linspace(0.0, geo.n_r - 1.0, shape[0], dtype=np.float32) + 0.5) * np.float32(depth / geo.n_r))[:, None]
    eps = max(0.3, 1.4 * depth / geo.n_r)  # soft edges no sharper than the axial sampling
    u, v, rot = anat.to_template(ctx.item.view, x, y, ctx.heart)
    parts = anat.build_parts(ctx.item.view, u, v, ctx.heart, phase, valves_at(cycle))

    # Tissue textures: smooth random fields (log-normal) so walls and background are patchy.
    def field(name: str) -> np.ndarray:
        return scan.smooth_knots(kn[name], shape)
    fine = field("fine")
    # Chest wall: bright layers in the first centimetres; deeper tissue a little brighter.
    near = np.exp(-r_cm / np.float32(1.2)) * (np.float32(0.6) + np.float32(0.4) * np.cos(r_cm * np.float32(7.0)))
    deep = np.float32(0.55) + np.float32(0.35) * np.clip((r_cm - np.float32(0.55 * depth)) * np.float32(2.5 / depth), 0, 1)
    background = (np.float32(anat.BACKGROUND) * deep) * np.exp(field("bg") + np.float32(0.6) * fine) + np.float32(0.08) * near
    if parts.outline is not None:
        # Lung beside the heart, towards the sector edges, returns little: darker flanks.
        th = np.abs(np.linspace(-1.0, 1.0, shape[1], dtype=np.float32))[None, :]
        lung = np.clip((parts.outline - np.float32(0.8)) * np.float32(0.5), 0, 1) * np.clip(th * 1.6 - 0.3, 0, 1)
        background *= np.float32(1.0) - np.float32(0.7) * lung
    myo_tex = np.exp(np.float32(0.8) * field("myo") + np.float32(0.5) * fine)
    # The pericardium shows in patches, brightest behind the heart where it faces the beam.
    peri_tex = np.maximum(field("peri") + np.float32(0.3), 0.0) * np.clip((r_cm - np.float32(4.0)) * np.float32(0.15), 0.1, 1.0)
    dropout = None
    if d["offaxis"] > 0:
        # Off-axis: one side of the heart leaves the plane and its walls fade.
        cx, cy, _ = anat.TEMPLATES[ctx.item.view]
        ang = ctx.shot.offaxis_dir[2]
        side = (u - np.float32(cx)) * np.float32(math.cos(ang)) + (v - np.float32(cy)) * np.float32(math.sin(ang))
        dropout = 1.0 - np.float32(0.75 * d["offaxis"]) * np.clip(side * np.float32(0.4), 0.0, 1.0)
    refl, blood = anat.compose(parts, eps, background, myo_tex, peri_tex, dropout)
    # Haze / clutter: reverberation fills the near field and the pools with grey.
    if d["haze"] > 0:
        hz = np.float32(d["haze"] ** 1.5) * (np.float32(0.0004) + np.float32(0.004) * np.exp(-r_cm / np.float32(3.0)))
        refl += hz * np.exp(np.float32(0.6) * field("haze"))
    vel = anat.beam_velocity(parts.jets, u, v, x, y, rot) if doppler else None
    return refl, (blood if doppler else None), vel


def _polar_frame(ctx: _Context, cycle: float, phase: float, scatter: np.ndarray, noise: np.ndarray,
                 specks: np.ndarray, doppler: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """One frame on the polar grid: display values in [0, 1], beam velocity and blood mask (Doppler only)."""
    st, geo, d = ctx.style, ctx.geo, ctx.degradations
    refl_c, blood_c, vel_c = _anatomy(ctx, cycle, phase, doppler)
    refl = scan.upsample(refl_c, geo.n_r, geo.n_th)
    # Sparse strong scatterers (fibres, fat, vessel walls): the bright specks of real tissue.
    refl += specks * (refl > np.float32(anat.BLOOD * 4)) * refl
    # Specular echoes where echogenicity changes along the beam: walls facing the transducer
    # light up, walls running along the beam (lateral walls in apical views) drop out.
    grad = np.zeros_like(refl)
    np.abs(refl[2:] - refl[:-2], out=grad[1:-1])
    refl += np.float32(3.0) * grad
    # Weaker beams at the sector edges (element directivity), and rib shadows below the ribs.
    th = np.linspace(-1.0, 1.0, geo.n_th, dtype=np.float32)[None, :]
    rr = ((np.arange(geo.n_r, dtype=np.float32) + 0.5) / geo.n_r)[:, None]
    refl *= np.float32(1.0) - np.float32(0.6) * th**4
    if d["rib"] > 0:
        for centre, width, start in ctx.shot.ribs[: 1 + int(d["rib"] > 0.5)]:
            w = (0.06 + 0.16 * d["rib"]) * width
            loss = (0.35 + 0.5 * d["rib"]) * np.clip(1.5 - np.abs(th - centre) / w, 0, 1)
            refl *= 1 - (rr > start) * loss
    power = scan.speckle_power(refl, scatter, st.speckle_axial, st.speckle_lateral)
    # Attenuation minus time-gain compensation; the electronic noise is added before the TGC
    # gain, so it grows with depth.
    tgc = np.float32(10.0) ** (np.float32(ctx.patient.attenuation_db_cm * geo.depth_cm / 10.0) * rr)
    power /= tgc
    noise_db = -52.0 + 26.0 * d["noise"]
    power += np.float32(10 ** (noise_db / 10)) * noise
    power *= tgc
    img = scan.log_compress(power, st.white_db + ctx.patient.gain_db, st.dynamic_range_db, st.gamma, 0.07)
    if d["contrast"] > 0:
        c = d["contrast"]
        img = np.float32(0.28 * c) + img * np.float32(1 - 0.62 * c)
    if not doppler:
        return img, None, None
    return img, scan.upsample(vel_c, geo.n_r, geo.n_th), scan.upsample(blood_c, geo.n_r, geo.n_th)


def _noise_fields(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Scatterers (complex normal) and electronic noise power (exponential) for one frame."""
    return scan.speckle_noise(rng, shape), rng.standard_exponential(shape, dtype=np.float32)


def _specks(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Sparse strong scatterers (fibres, fat, vessel walls): 0 or 12 per sample, the bright specks of tissue."""
    return (rng.random(shape, dtype=np.float32) < np.float32(0.004)) * np.float32(12.0)


def _prepared_map(half_angle: int, size: int, n_r: int, n_th: int) -> scan.ScanMap:
    # The thesis crops the cone and resizes to a square: apex at the top centre, cone height =
    # image height, wide sectors lose their lateral tips (as in EchoNet-Dynamic).
    return scan.scan_map(n_r, n_th, half_angle, size, size, 0.01 * size, size / 2.0, 0.98 * size)


def _prepared_grid(size: int, half_angle: int) -> tuple[int, int]:
    n_r = max(16, int(round(0.9 * size)))
    n_th = max(16, int(round(size * 1.7 * math.sin(math.radians(half_angle)))))
    return n_r, n_th


def render(item: PhantomItem, seed: int, size: int = 112) -> np.ndarray:
    """Prepared frame: uint8 (size, size) grayscale, cone centre-cropped with its apex at the top."""
    pat = _patient(item.source, item.patient_id, seed)
    n_r, n_th = _prepared_grid(size, _half_angle(item, pat))
    ctx = _context(item, seed, n_r, n_th)
    rng = np.random.default_rng([seed, 505, item.index, size])
    scatter, noise = _noise_fields(rng, (n_r, n_th))
    specks = _specks(rng, (n_r, n_th))
    img, _, _ = _polar_frame(ctx, _item_cycle(item, pat, ctx.shot), item.phase, scatter, noise, specks)
    return scan.to_uint8(scan.scan_convert(img, _prepared_map(ctx.geo.half_angle, size, n_r, n_th)))


def prepared_cone_mask(item: PhantomItem, seed: int, size: int = 112) -> np.ndarray:
    """Boolean (size, size) mask of the pixels inside the cone of `render(item, seed, size)`."""
    half = _half_angle(item, _patient(item.source, item.patient_id, seed))
    return scan.cone_mask(_prepared_map(half, size, *_prepared_grid(size, half)))


def _check_item(item: PhantomItem) -> None:
    if item.source not in SOURCES:
        raise ValueError(f"item {item.index}: unknown source {item.source!r}; valid: {sorted(SOURCES)}")
    if item.view not in VIEWS:
        raise ValueError(f"item {item.index}: unknown view {item.view!r}; valid: {list(VIEWS)}")
    if not 0.0 <= item.phase <= 1.0:
        raise ValueError(f"item {item.index}: phase must be in [0, 1], got {item.phase}")


# ----------------------------------------------------------------------------------------------
# Native ("acquired") frames and clips


def _raw_map(item: PhantomItem, half_angle: int) -> tuple[scan.ScanMap, int, int]:
    st = SOURCES[item.source]
    h, w = st.raw_hw
    radius = st.raw_radius * h
    n_r = int(np.clip(0.9 * radius, 48, 300))
    n_th = int(np.clip(n_r * 1.9 * math.sin(math.radians(half_angle)), 32, 480))
    return scan.scan_map(n_r, n_th, half_angle, h, w, st.raw_apex * h, w / 2.0, radius), n_r, n_th


def _overlays(rgb: np.ndarray, item: PhantomItem, geo: _Geometry, cycle: float) -> None:
    """Burn in what a scanner shows around the cone: labels, settings, depth marks, ECG strip."""
    st = SOURCES[item.source]
    h, w = rgb.shape[:2]
    if st.text_rgb is not None:
        sc = 2 if h >= 400 else 1
        key = _key(item.patient_id) % 100000
        lines = [f"ECHOSYNTH {st.name.upper()}", f"ID {key:05d}", f"{2015 + key % 8}/{1 + key % 12:02d}/{1 + key % 28:02d}",
                 f"{item.view}  {geo.depth_cm:.0f}CM", f"{st.fps:.0f}HZ DR{st.dynamic_range_db:.0f}"]
        for i, line in enumerate(lines):
            ovl.draw_text(rgb, line, 4 * sc + i * 9 * sc, 4 * sc, st.text_rgb, sc)
        right = ["M5S", "2D", f"G{50 + int(st.white_db * 3)}"]
        for i, line in enumerate(right):
            ovl.draw_text(rgb, line, 4 * sc + i * 9 * sc, w - 4 * sc - 6 * sc * len(line), st.text_rgb, sc)
        # depth marks: a dot every centimetre right of the cone's apex line
        apex_r, radius = st.raw_apex * h, st.raw_radius * h
        for cm in range(1, int(geo.depth_cm) + 1):
            r = int(apex_r + radius * cm / geo.depth_cm)
            c = int(w / 2 + radius * math.sin(math.radians(geo.half_angle)) * cm / geo.depth_cm) + 6
            if r < h - 2 and c < w - 2:
                rgb[r - sc // 2: r + 1 + sc // 2, c: c + 1 + sc] = st.text_rgb
    if st.ecg_rgb is not None:
        bh = max(10, h // 12)
        ovl.draw_ecg(rgb, (h - bh - 4, w // 8, bh, 3 * w // 4), cycle, 2.0, st.ecg_rgb)


def _compose_rgb(gray: np.ndarray, tint: tuple[float, float, float], colour: np.ndarray | None,
                 colour_mask: np.ndarray | None) -> np.ndarray:
    rgb = gray[..., None] * np.asarray(tint, np.float32)[None, None, :]
    if colour is not None:
        rgb = np.where(colour_mask[..., None], colour, rgb)
    return scan.to_uint8(rgb)


def _doppler_layer(vel: np.ndarray, blood: np.ndarray, sm: scan.ScanMap, roi: np.ndarray,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Colour and mask of a colour-Doppler overlay: flow inside the pools within the colour box."""
    # Velocity estimates are noisy where flow is slow; the wall filter hides the slowest.
    v = vel * np.float32(1.4) + np.float32(0.06) * rng.standard_normal(vel.shape, dtype=np.float32)
    v = v * (blood > 0.5) * roi
    vc = scan.scan_convert(v, sm)
    mask = np.abs(vc) > 0.15
    return ovl.doppler_rgb(vc), mask


def _doppler_roi(geo: _Geometry) -> np.ndarray:
    """The colour box: a sub-sector over the middle of the image, as a scanner draws it."""
    th = np.linspace(-1.0, 1.0, geo.n_th, dtype=np.float32)[None, :]
    rr = ((np.arange(geo.n_r, dtype=np.float32) + 0.5) / geo.n_r)[:, None]
    return ((np.abs(th) < 0.6) & (rr > 0.2) & (rr < 0.95)).astype(np.float32)


def render_raw(item: PhantomItem, seed: int) -> np.ndarray:
    """The acquired frame: uint8 RGB (H, W, 3) at the source's native size, with its burnt-in overlays."""
    return _render_frames(item, seed, (None,), doppler=False, raw=True, size=0)[0]


def render_clip(item: PhantomItem, seed: int, n_frames: int = 16, doppler: bool = False, raw: bool = True,
                size: int = 112) -> np.ndarray:
    """One cardiac cycle from end-diastole as (T, H, W, 3) uint8: native frames with overlays, or prepared."""
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    return _render_frames(item, seed, tuple(t / n_frames for t in range(n_frames)), doppler, raw, size)


def _render_frames(item: PhantomItem, seed: int, cycles: tuple, doppler: bool, raw: bool, size: int) -> np.ndarray:
    """Frames at the given cycle positions (None = the item's own moment) of one acquisition."""
    n_frames = len(cycles)
    pat = _patient(item.source, item.patient_id, seed)
    half = _half_angle(item, pat)
    st = SOURCES[item.source]
    if raw:
        sm, n_r, n_th = _raw_map(item, half)
        tint = st.tint
    else:
        n_r, n_th = _prepared_grid(size, half)
        sm, tint = _prepared_map(half, size, n_r, n_th), (1.0, 1.0, 1.0)
    ctx = _context(item, seed, n_r, n_th)
    rng = np.random.default_rng([seed, 606, item.index, int(raw), 0 if raw else size, n_frames])
    base, _ = _noise_fields(rng, (n_r, n_th))
    specks = _specks(rng, (n_r, n_th))
    roi = _doppler_roi(ctx.geo)
    frames = []
    for c in cycles:
        if c is None:  # a still frame: the item's own moment of the cycle
            c, phase = _item_cycle(item, pat, ctx.shot), item.phase
        else:
            phase = float(phase_of_cycle(c))
        # Tissue speckle persists from frame to frame (partly decorrelating), noise does not.
        fresh, noise = _noise_fields(rng, (n_r, n_th))
        scatter = np.float32(0.8) * base + np.float32(0.6) * fresh
        img, vel, blood = _polar_frame(ctx, c, phase, scatter, noise, specks, doppler)
        gray = scan.scan_convert(img, sm)
        colour = mask = None
        if doppler:
            colour, mask = _doppler_layer(vel, blood, sm, roi, rng)
        rgb = _compose_rgb(gray, tint, colour, mask)
        if raw:
            _overlays(rgb, item, ctx.geo, c)
        frames.append(rgb)
    return np.stack(frames)


def is_doppler(item: PhantomItem, seed: int, fraction: float = 0.1) -> bool:
    """Whether this item's clip is a colour-Doppler acquisition (a fixed `fraction` of clips)."""
    return bool(np.random.default_rng([seed, 707, item.index]).uniform() < fraction)


def write_clips(out: str | Path, items: list[PhantomItem], seed: int, n_frames: int = 16,
                doppler_fraction: float = 0.1, ext: str = ".avi", raw: bool = True, size: int = 112) -> list[Path]:
    """Write one clip per item as OUT/<source>/<view>/<index>.avi (Doppler for `doppler_fraction`); return paths."""
    paths = []
    for item in items:
        path = Path(out) / item.source / item.view / f"{item.index:06d}{ext}"
        clip = render_clip(item, seed, n_frames, is_doppler(item, seed, doppler_fraction), raw, size)
        write_video(path, clip, fps=SOURCES[item.source].fps)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------
# Grid for eyes (make demo, docs)


def sample_grid(seed: int = 0, size: int = 112, per_cell: int = 3) -> np.ndarray:
    """Labelled uint8 grid: rows = views, column groups = sources (per_cell images each; empty cells blank)."""
    cells: list[list[np.ndarray | None]] = []
    for vi, view in enumerate(VIEWS):
        row: list[np.ndarray | None] = []
        for si, source in enumerate(SOURCES):
            for j in range(per_cell):
                if view in SOURCES[source].views:
                    idx = 1_000_000 + (vi * len(SOURCES) + si) * per_cell + j
                    row.append(render(make_item(idx, source, view, f"g{j:04d}", seed), seed, size))
                else:
                    row.append(None)
        cells.append(row)
    return ovl.label_grid(cells, list(VIEWS), [s.upper() for s in SOURCES], per_cell)


def main(argv: list[str] | None = None) -> None:
    """Write the phantom sample grid (and optionally a side-by-side with real frames) as PNG."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="PNG path for the view × source grid")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--per-cell", type=int, default=3)
    ap.add_argument("--real", help="directory of real frames (PNG) to show beside phantom A4C frames")
    ap.add_argument("--compare-out", help="PNG path for the real-vs-phantom figure (needs --real)")
    ap.add_argument("--raw-out", help="PNG path for native frames of every source plus a colour-Doppler frame")
    args = ap.parse_args(argv)

    save_png(args.out, sample_grid(args.seed, args.size, args.per_cell))
    if args.real and args.compare_out:
        from echosynth.gen.data.manifest import load_gray  # here: only --real needs pandas

        reals = [load_gray(p, args.size) for p in sorted(Path(args.real).glob("*.png"))][:6]
        if not reals:
            raise SystemExit(f"--real {args.real}: no PNG files found")
        fakes = []
        for j, source in enumerate(("dynamic", "camus", "tmed2", "unity", "dynamic", "camus")[: len(reals)]):
            it = make_item(2_000_000 + j, source, "A4C", f"c{j:04d}", args.seed)
            fakes.append(render(it, args.seed, args.size))
        fig = ovl.label_grid([list(reals), list(fakes)], ["REAL", "PHANTOM"], ["A4C"], len(reals))
        save_png(args.compare_out, fig)
    if args.raw_out:
        save_png(args.raw_out, _raw_figure(args.seed))


def _raw_figure(seed: int, height: int = 240) -> np.ndarray:
    """Native frames of every source side by side (resized to one height), then a colour-Doppler frame."""
    from PIL import Image

    tiles = []
    for j, source in enumerate(SOURCES):
        item = make_item(3_000_000 + j, source, SOURCES[source].views[-1], f"r{j:04d}", seed)
        tiles.append(render_raw(dataclasses.replace(item, quality=max(item.quality, 8.0)), seed))
    item = make_item(3_000_100, "unity", "A4C", "r0100", seed)
    tiles.append(render_clip(dataclasses.replace(item, quality=9.0), seed, n_frames=8, doppler=True)[4])
    resized = [np.asarray(Image.fromarray(t).resize((max(1, round(t.shape[1] * height / t.shape[0])), height),
                                                    Image.BILINEAR)) for t in tiles]
    gap = np.full((height, 6, 3), 40, np.uint8)
    return np.concatenate([x for t in resized for x in (t, gap)][:-1], axis=1)


if __name__ == "__main__":
    main()
