"""Burnt-in overlays for phantom frames: bitmap text, an ECG trace, colour-Doppler colours, grid labels.

Text uses a built-in 5×7 bitmap font rather than a system or Pillow font, so the pixels are the
same on every machine (font files and FreeType versions differ between installs).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

# 5×7 glyphs: seven rows, each a 5-bit mask (bit 4 = leftmost column).
_GLYPHS: dict[str, tuple[int, ...]] = {
    "0": (0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E), "1": (0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "2": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F), "3": (0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E),
    "4": (0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02), "5": (0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E),
    "6": (0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E), "7": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08),
    "8": (0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E), "9": (0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C),
    "A": (0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11), "B": (0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E),
    "C": (0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E), "D": (0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C),
    "E": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F), "F": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10),
    "G": (0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F), "H": (0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11),
    "I": (0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E), "J": (0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C),
    "K": (0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11), "L": (0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F),
    "M": (0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11), "N": (0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11),
    "O": (0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E), "P": (0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10),
    "Q": (0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D), "R": (0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11),
    "S": (0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E), "T": (0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04),
    "U": (0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E), "V": (0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "W": (0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A), "X": (0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11),
    "Y": (0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04), "Z": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F),
    " ": (0, 0, 0, 0, 0, 0, 0), ".": (0, 0, 0, 0, 0, 0x0C, 0x0C), ":": (0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0),
    "-": (0, 0, 0, 0x1F, 0, 0, 0), "/": (0, 0x01, 0x02, 0x04, 0x08, 0x10, 0), "+": (0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0),
    "%": (0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03), "=": (0, 0, 0x1F, 0, 0x1F, 0, 0),
    "(": (0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02), ")": (0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08),
    "#": (0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A), "_": (0, 0, 0, 0, 0, 0, 0x1F), ",": (0, 0, 0, 0, 0x0C, 0x04, 0x08),
    "×": (0, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0), "?": (0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04),
}


@lru_cache(maxsize=256)
def _glyph(ch: str) -> np.ndarray:
    rows = _GLYPHS.get(ch.upper(), _GLYPHS["?"])
    g = np.array([[(r >> (4 - c)) & 1 for c in range(5)] for r in rows], dtype=bool)
    g.flags.writeable = False
    return g


def text_mask(text: str, scale: int = 1) -> np.ndarray:
    """Boolean bitmap of `text` in the 5×7 font (1 px spacing), each font pixel scale × scale."""
    if not text:
        return np.zeros((7 * scale, 0), bool)
    cols = []
    for ch in text:
        cols += [_glyph(ch), np.zeros((7, 1), bool)]
    m = np.concatenate(cols[:-1], axis=1)
    return np.kron(m, np.ones((scale, scale), bool)) if scale > 1 else m


def draw_text(img: np.ndarray, text: str, row: int, col: int, color, scale: int = 1) -> None:
    """Burn `text` into img (H, W) or (H, W, 3) in place at (row, col), clipped to the image."""
    m = text_mask(text, scale)
    h, w = img.shape[:2]
    r1, c1 = min(h, row + m.shape[0]), min(w, col + m.shape[1])
    if r1 <= row or c1 <= col or row < 0 or col < 0:
        return
    img[row:r1, col:c1][m[: r1 - row, : c1 - col]] = color


def ecg_wave(t: np.ndarray) -> np.ndarray:
    """A synthetic PQRST complex over cycle position t ∈ [0, 1) with the R peak at t = 0 (end-diastole)."""
    t = (t + 0.5) % 1.0 - 0.5  # centre the R wave on 0
    def g(mu: float, sd: float, a: float) -> np.ndarray:
        return a * np.exp(-0.5 * ((t - mu) / sd) ** 2)
    return g(-0.17, 0.025, 0.12) + g(-0.025, 0.008, -0.12) + g(0.0, 0.009, 1.0) + g(0.025, 0.008, -0.25) + g(0.28, 0.045, 0.28)


def draw_ecg(img: np.ndarray, box: tuple[int, int, int, int], cycle_now: float, beats: float, color,
             offset: float = 0.0) -> None:
    """Draw an ECG strip into box (row0, col0, height, width) with a marker at the current cycle position.

    The strip shows `beats` cardiac cycles; the marker (a short bar) sits where the displayed frame is,
    as on a scanner's screen.
    """
    r0, c0, bh, bw = box
    h, w = img.shape[:2]
    bw = min(bw, w - c0)
    if bw < 4 or bh < 4 or r0 + bh > h:
        return
    t = offset + np.arange(bw + 1) * (beats / bw)
    y = r0 + bh - 2 - np.round(ecg_wave(t % 1.0) * (bh - 4) * 0.85 + 0.12 * (bh - 4)).astype(int)
    lo, hi = np.minimum(y[:-1], y[1:]), np.maximum(y[:-1], y[1:])
    rows = np.arange(r0, r0 + bh)[:, None]
    mask = (rows >= lo[None, :]) & (rows <= hi[None, :])
    img[r0:r0 + bh, c0:c0 + bw][mask] = color
    # marker at the frame's position in the most recent displayed beat
    mc = c0 + int(((math.floor(beats) - 1 + cycle_now - offset) % beats) / beats * bw)
    mc = min(max(mc, c0), c0 + bw - 1)
    img[r0:r0 + bh, mc] = (255, 255, 255) if img.ndim == 3 else 255


def doppler_rgb(vel: np.ndarray) -> np.ndarray:
    """Velocity (±1 = Nyquist; beyond wraps round = aliasing) → colour map: red/yellow towards, blue/cyan away."""
    v = (vel + 1.0) % 2.0 - 1.0
    a = np.abs(v)
    pos = v > 0
    hi = np.clip((a - 0.55) * 2.2, 0, 1)
    base = np.clip(0.35 + a * 1.2, 0, 1)
    rgb = np.zeros((*vel.shape, 3), np.float32)
    rgb[..., 0] = np.where(pos, base, 0.0)
    rgb[..., 1] = hi * np.where(pos, 0.9, 0.8)
    rgb[..., 2] = np.where(pos, 0.0, base)
    return rgb


def label_grid(cells: list[list[np.ndarray | None]], row_labels: list[str], col_labels: list[str],
               group: int, pad: int = 2) -> np.ndarray:
    """Tile equal-size grayscale cells into one labelled image: rows × columns, columns in groups.

    Empty cells (None) stay blank; a label row on top names each group of `group` columns, a
    label column on the left names each row.
    """
    h, w = next(c for row in cells for c in row if c is not None).shape
    scale = 2 if h >= 96 else 1
    lab_w = 7 * 6 * scale + 2 * pad
    lab_h = 7 * scale + 4 * pad
    n_rows, n_cols = len(cells), len(cells[0])
    gap = 3 * pad  # between column groups
    n_groups = math.ceil(n_cols / group)
    width = lab_w + n_cols * (w + pad) + (n_groups - 1) * gap
    height = lab_h + n_rows * (h + pad)
    out = np.full((height, width), 24, np.uint8)
    for gi in range(n_groups):
        x0 = lab_w + gi * (group * (w + pad) + gap)
        draw_text(out, col_labels[gi], pad, x0, 255, scale)
    for ri, row in enumerate(cells):
        y0 = lab_h + ri * (h + pad)
        draw_text(out, row_labels[ri], y0 + h // 2 - 3 * scale, pad, 255, scale)
        for ci, cell in enumerate(row):
            x0 = lab_w + ci * (w + pad) + (ci // group) * gap
            out[y0:y0 + h, x0:x0 + w] = cell if cell is not None else 0
    return out
