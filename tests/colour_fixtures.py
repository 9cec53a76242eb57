"""A labelled set of scanner-export frames for the colour-Doppler detector, built from the phantom.

Each case is an RGB frame (H, W, 3) as a scanner screen shows it: a phantom B-mode sector with
burnt-in overlays (white text, a green or yellow ECG trace crossing the sector's lower edge),
optionally a colour-Doppler or power-Doppler map, a tinted grey map, or a split screen; then
saved as PNG or as JPEG at several qualities and chroma subsamplings. The label says whether
the frame carries flow colour (Doppler, split screen) or not (B-mode, tinted B-mode).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from echosynth.gen.data import phantom
from echosynth.gen.data import phantom_overlay as ovl

H, W = 144, 192  # screen size of a fixture frame
SECTOR = 128  # side of the phantom's prepared B-mode sector pasted at the top centre
GREEN, YELLOW, WHITE = (40, 220, 60), (235, 215, 80), (255, 255, 255)
TINTS = {"sepia": (1.0, 0.86, 0.66), "bronze": (1.0, 0.78, 0.52), "cool": (0.82, 0.93, 1.0)}
# (quality, Pillow subsampling: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0)
JPEG_SETTINGS = tuple((q, s) for q in (70, 85, 95) for s in (2, 1, 0))
SUBSAMPLING = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


@dataclass(frozen=True)
class Case:
    """One labelled fixture frame."""

    name: str  # e.g. "bmode-green-3 jpeg q85 4:2:0"
    kind: str  # bmode, tinted, doppler-small, doppler-large, power, split
    encoding: str  # png, or "jpeg q<quality> <subsampling>"
    flow: bool  # the truth: True = colour flow present (reject), False = grey B-mode (keep)
    rgb: np.ndarray


def _items(n: int, seed: int) -> list[phantom.PhantomItem]:
    return phantom.plan(max(n, 8), seed=seed)[:n]


def gray_sector(index: int, seed: int = 0, size: int = SECTOR) -> np.ndarray:
    """The phantom's prepared grey sector (size, size) for item `index`."""
    return phantom.render(_items(index + 1, seed)[index], seed, size)


def screen(sector: np.ndarray, tint: tuple[float, float, float] = (1.0, 1.0, 1.0), left: int | None = None) -> np.ndarray:
    """A black (H, W, 3) screen with the sector (tinted by the grey map) pasted at the top."""
    out = np.zeros((H, W, 3), np.uint8)
    s = sector.shape[0]
    x0 = (W - s) // 2 if left is None else left
    rgb = np.clip(sector[..., None].astype(np.float32) * np.asarray(tint, np.float32), 0, 255)
    out[:s, x0:x0 + s] = np.rint(rgb).astype(np.uint8)
    return out


def add_text(rgb: np.ndarray, seed: int) -> None:
    """White burnt-in text: patient line and settings at the top, a frame rate at the bottom."""
    ovl.draw_text(rgb, f"ID {seed:05d}", 2, 2, WHITE)
    ovl.draw_text(rgb, "M5S 2D", 11, 2, WHITE)
    ovl.draw_text(rgb, "G60 DR45", 2, W - 50, WHITE)
    ovl.draw_text(rgb, f"{30 + seed % 40}HZ", H - 9, W - 30, WHITE)


def add_ecg(rgb: np.ndarray, colour, cycle: float, thick: int = 1) -> None:
    """An ECG trace whose strip overlaps the sector's lower edge (the R waves reach into it)."""
    box = (SECTOR - 38, 12, 28, W - 24)  # baseline near row 113: it crosses the sector's lower arc
    ovl.draw_ecg(rgb, box, cycle, 2.0, colour)
    if thick > 1:  # a bolder trace: the same wave drawn one pixel lower
        tmp = np.zeros_like(rgb)
        ovl.draw_ecg(tmp, (box[0] + 1, *box[1:]), cycle, 2.0, colour)
        hit = tmp.any(axis=2)
        rgb[hit] = tmp[hit]


def _jet_velocity(shape: tuple[int, int], centre: tuple[float, float], radii: tuple[float, float],
                  peak: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An elliptic jet: velocity peaking at its centre (aliasing beyond ±1), mask, with noise."""
    y, x = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    d2 = ((y - centre[0]) / radii[0]) ** 2 + ((x - centre[1]) / radii[1]) ** 2
    vel = peak * np.exp(-1.2 * d2) + 0.06 * rng.standard_normal(shape).astype(np.float32)
    return vel, d2 < 1


def add_colour_flow(rgb: np.ndarray, sector_box: tuple[int, int, int], rng: np.random.Generator,
                    large: bool) -> None:
    """Red/blue jets (yellow/cyan where they alias) inside the sector, through the phantom's map."""
    y0, x0, s = sector_box
    n = 2 if large else 1
    for k in range(n):
        if large:
            radii = (rng.uniform(0.16, 0.24) * s, rng.uniform(0.08, 0.12) * s)
        else:
            radii = (rng.uniform(0.045, 0.07) * s, rng.uniform(0.03, 0.045) * s)
        cy = y0 + rng.uniform(0.35, 0.7) * s
        cx = x0 + s / 2 + (k - (n - 1) / 2) * 0.28 * s + rng.uniform(-0.05, 0.05) * s
        sign = 1.0 if (k + int(rng.integers(2))) % 2 == 0 else -1.0
        peak = sign * (rng.uniform(1.1, 1.6) if large else rng.uniform(0.6, 1.2))  # > 1: turbulent aliasing
        vel, blob = _jet_velocity(rgb.shape[:2], (cy, cx), radii, peak, rng)
        colour = np.rint(ovl.doppler_rgb(vel) * 255).astype(np.uint8)
        blob &= rng.uniform(size=blob.shape) > 0.04  # dropouts: a few pixels fall below the wall filter
        rgb[blob] = colour[blob]


def add_power_flow(rgb: np.ndarray, sector_box: tuple[int, int, int], rng: np.random.Generator) -> None:
    """Power Doppler: one orange-to-yellow mono-hue map of flow power over a chamber-sized blob."""
    y0, x0, s = sector_box
    y, x = np.mgrid[0:rgb.shape[0], 0:rgb.shape[1]].astype(np.float32)
    cy, cx = y0 + rng.uniform(0.4, 0.6) * s, x0 + s / 2 + rng.uniform(-0.08, 0.08) * s
    ry, rx = rng.uniform(0.12, 0.2) * s, rng.uniform(0.07, 0.12) * s
    d2 = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2
    p = np.clip(np.exp(-d2) + 0.08 * rng.standard_normal(d2.shape), 0, 1)
    col = np.stack([150 + 105 * p, 40 + 190 * p ** 1.5, 10 + 60 * p ** 3], -1)
    blob = d2 < 1
    rgb[blob] = np.rint(col[blob]).astype(np.uint8)


def encode(rgb: np.ndarray, quality: int, subsampling: int) -> np.ndarray:
    """The frame after a JPEG round trip (Pillow's libjpeg, like a scanner's export)."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality, subsampling=subsampling)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def bmode_frame(index: int, seed: int, ecg=GREEN, tint=(1.0, 1.0, 1.0), thick: int = 1) -> np.ndarray:
    """A grey (or tinted) B-mode screen with text and an ECG trace."""
    rgb = screen(gray_sector(index, seed), tint)
    add_text(rgb, index)
    add_ecg(rgb, ecg, cycle=(index * 0.37) % 1.0, thick=thick)
    return rgb


def doppler_frame(index: int, seed: int, kind: str) -> np.ndarray:
    """A colour-Doppler (small or large jets) or power-Doppler screen with text and ECG."""
    rng = np.random.default_rng([seed, 919, index, len(kind)])
    rgb = screen(gray_sector(index, seed))
    box = (0, (W - SECTOR) // 2, SECTOR)
    if kind == "power":
        add_power_flow(rgb, box, rng)
    else:
        add_colour_flow(rgb, box, rng, large=kind == "doppler-large")
    add_text(rgb, index)
    add_ecg(rgb, GREEN if index % 2 else YELLOW, cycle=(index * 0.29) % 1.0)
    return rgb


def split_frame(index: int, seed: int) -> np.ndarray:
    """A split screen: the B-mode sector on the left, the same view with colour flow on the right."""
    s = 92
    sector = gray_sector(index, seed, s)
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:s, 2:2 + s] = sector[..., None]
    rgb[:s, W - 2 - s:W - 2] = sector[..., None]
    rng = np.random.default_rng([seed, 929, index])
    add_colour_flow(rgb, (0, W - 2 - s, s), rng, large=bool(index % 2))
    add_text(rgb, index)
    add_ecg(rgb, GREEN, cycle=(index * 0.41) % 1.0)
    return rgb


def base_frames(seed: int = 0, n: int = 4) -> list[tuple[str, str, bool, np.ndarray]]:
    """The uncompressed frames: (name, kind, flow, rgb), n of each B-mode/Doppler kind."""
    out = []
    for i in range(n):
        out.append((f"bmode-green-{i}", "bmode", False, bmode_frame(i, seed, GREEN, thick=1 + i % 2)))
        out.append((f"bmode-yellow-{i}", "bmode", False, bmode_frame(n + i, seed, YELLOW, thick=1 + (i + 1) % 2)))
        tint_name = list(TINTS)[i % len(TINTS)]
        out.append((f"tinted-{tint_name}-{i}", "tinted", False,
                    bmode_frame(2 * n + i, seed, YELLOW if i % 2 else GREEN, TINTS[tint_name])))
        out.append((f"doppler-small-{i}", "doppler-small", True, doppler_frame(3 * n + i, seed, "doppler-small")))
        out.append((f"doppler-large-{i}", "doppler-large", True, doppler_frame(4 * n + i, seed, "doppler-large")))
        out.append((f"power-{i}", "power", True, doppler_frame(5 * n + i, seed, "power")))
        out.append((f"split-{i}", "split", True, split_frame(6 * n + i, seed)))
    return out


def cases(seed: int = 0, n: int = 4, jpeg_settings=JPEG_SETTINGS) -> list[Case]:
    """Every base frame as PNG and after each JPEG setting: the labelled fixture set."""
    out = []
    for name, kind, flow, rgb in base_frames(seed, n):
        out.append(Case(f"{name} png", kind, "png", flow, rgb))
        for q, s in jpeg_settings:
            enc = f"jpeg q{q} {SUBSAMPLING[s]}"
            out.append(Case(f"{name} {enc}", kind, enc, flow, encode(rgb, q, s)))
    return out


def confusion(case_list: list[Case], threshold: float) -> list[dict]:
    """Per kind: frames, rejected as colour flow, kept, and the detector's flow-fraction range."""
    from echosynth.gen.data.preprocess import flow_evidence

    rows: dict[str, dict] = {}
    for c in case_list:
        f = flow_evidence(c.rgb).fraction
        r = rows.setdefault(c.kind, {"kind": c.kind, "flow": c.flow, "n": 0, "rejected": 0, "min": f, "max": f})
        r["n"] += 1
        r["rejected"] += int(f > threshold)
        r["min"], r["max"] = min(r["min"], f), max(r["max"], f)
    return list(rows.values())


def markdown(rows: list[dict]) -> str:
    """The confusion table as Markdown (for docs/importers.md)."""
    lines = ["| frames | truth | n | rejected | kept | flow share (min–max) |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {'flow' if r['flow'] else 'B-mode'} | {r['n']} | {r['rejected']} | "
                     f"{r['n'] - r['rejected']} | {r['min']:.4f}–{r['max']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m tests.colour_fixtures: the table in docs/importers.md
    from echosynth.gen.data.preprocess import flow_evidence  # noqa: F401  (fail early without the package)
    from echosynth.gen.prepare import PrepareConfig

    t = PrepareConfig().doppler_threshold
    for seed in (0, 1):
        print(f"seed {seed}, --doppler_threshold {t}:\n" + markdown(confusion(cases(seed), t)) + "\n")
