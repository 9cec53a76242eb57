"""Ultrasound image formation for the phantom: polar sample grids, speckle, compression, scan conversion.

A B-mode image is acquired along scan lines that fan out from the transducer, so everything that
is physics (speckle, attenuation, time-gain compensation, log compression) happens here on a
polar grid (depth × angle), and only the finished, log-compressed image is scan-converted onto
the Cartesian pixel grid, as a scanner does. Working in polar samples is also what makes the
speckle coarsen laterally with depth for free: a point-spread function of constant angular width
covers more tissue the deeper it goes.

The grids and scan-conversion maps depend only on the geometry (sample counts, sector angle,
output size), so they are built once per geometry and cached (read-only arrays).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter1d

# ----------------------------------------------------------------------------------------------
# Polar grids


@lru_cache(maxsize=128)
def polar_grid(n_r: int, n_th: int, half_angle_deg: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit-radius sample positions (x, y, rho) on an n_r × n_th polar grid; apex at (0, 0), y down."""
    a = math.radians(half_angle_deg)
    rho = ((np.arange(n_r, dtype=np.float64) + 0.5) / n_r)[:, None]
    th = np.linspace(-a, a, n_th)[None, :]
    x = (rho * np.sin(th)).astype(np.float32)
    y = (rho * np.cos(th)).astype(np.float32)
    rr = np.broadcast_to(rho.astype(np.float32), (n_r, n_th)).copy()
    for arr in (x, y, rr):
        arr.flags.writeable = False
    return x, y, rr


@lru_cache(maxsize=64)
def _interp_matrix(n: int, k: int) -> np.ndarray:
    """(n, k) linear-interpolation weights from k control points spread over n samples."""
    pos = np.linspace(0.0, k - 1.0, n)
    lo = np.clip(np.floor(pos).astype(int), 0, k - 2) if k > 1 else np.zeros(n, int)
    m = np.zeros((n, k), np.float32)
    if k == 1:
        m[:, 0] = 1.0
    else:
        frac = pos - lo
        m[np.arange(n), lo] = 1.0 - frac
        m[np.arange(n), lo + 1] = frac
    m.flags.writeable = False
    return m


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], knots: tuple[int, int]) -> np.ndarray:
    """A smooth zero-mean, unit-ish-variance random field: coarse normal knots, bilinearly spread.

    Two small matrix products instead of a large Gaussian filter: cheap enough to use several per image.
    """
    g = rng.standard_normal(knots).astype(np.float32)
    return _interp_matrix(shape[0], knots[0]) @ g @ _interp_matrix(shape[1], knots[1]).T


# ----------------------------------------------------------------------------------------------
# Speckle and compression


@lru_cache(maxsize=64)
def _kernel_energy(sigma: float) -> float:
    """Sum of squares of scipy's normalised 1-D Gaussian kernel (truncate 2.5) for this sigma."""
    if sigma <= 0:
        return 1.0
    imp = np.zeros(41)
    imp[20] = 1.0
    k = gaussian_filter1d(imp, sigma, truncate=2.5, mode="constant")
    return float(np.sum(k * k))


def speckle_noise(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Complex scatterer field (2, n_r, n_th) float32: real and imaginary unit normals."""
    return rng.standard_normal((2, *shape), dtype=np.float32)


def speckle_power(reflectivity: np.ndarray, scatter: np.ndarray, sigma_axial: float,
                  sigma_lateral: float) -> np.ndarray:
    """Echo power |h * (sqrt(R)·n)|² with an anisotropic Gaussian PSF h, normalised so E[power] = R.

    The reflectivity scales the scatterers *before* the PSF, so bright walls bleed into the
    neighbouring pools (the blurry myocardium of real B-mode), and the envelope of the complex
    sum is Rayleigh distributed: fully developed speckle.
    """
    z = scatter * np.sqrt(reflectivity)[None]
    if sigma_axial > 0:
        z = gaussian_filter1d(z, sigma_axial, axis=1, truncate=2.5, mode="nearest")
    if sigma_lateral > 0:
        z = gaussian_filter1d(z, sigma_lateral, axis=2, truncate=2.5, mode="nearest")
    power = z[0] * z[0] + z[1] * z[1]
    power *= np.float32(0.5 / (_kernel_energy(round(sigma_axial, 3)) * _kernel_energy(round(sigma_lateral, 3))))
    return power


def log_compress(power: np.ndarray, white_db: float, dynamic_range_db: float, gamma: float) -> np.ndarray:
    """Log compression to display values in [0, 1]: white_db maps to 1, white_db − DR to 0, then a gamma."""
    db = 10.0 * np.log10(power + np.float32(1e-9))
    x = (db - np.float32(white_db - dynamic_range_db)) * np.float32(1.0 / dynamic_range_db)
    np.clip(x, 0.0, 1.0, out=x)
    if gamma != 1.0:
        x **= np.float32(gamma)
    return x


# ----------------------------------------------------------------------------------------------
# Scan conversion


@dataclass(frozen=True)
class ScanMap:
    """Bilinear polar → Cartesian lookup for one geometry: which output pixels lie in the cone and
    the four polar samples (flat indices) and weights each one interpolates."""

    out_shape: tuple[int, int]
    inside: np.ndarray  # flat output indices inside the cone
    idx: np.ndarray  # (4, K) flat polar indices
    w: np.ndarray  # (4, K) float32 weights
    rho: np.ndarray  # (K,) unit radius of each inside pixel
    theta: np.ndarray  # (K,) angle / half-angle, in [-1, 1]


@lru_cache(maxsize=64)
def scan_map(n_r: int, n_th: int, half_angle_deg: int, out_h: int, out_w: int,
             apex_row: float, apex_col: float, radius_px: float) -> ScanMap:
    """Scan-conversion map for a cone of `radius_px` with its apex at (apex_row, apex_col) (pixels)."""
    a = math.radians(half_angle_deg)
    rows, cols = np.mgrid[0:out_h, 0:out_w]
    x = (cols + 0.5 - apex_col) / radius_px
    y = (rows + 0.5 - apex_row) / radius_px
    rho = np.hypot(x, y)
    th = np.arctan2(x, y)
    inside = (rho <= 1.0) & (np.abs(th) <= a) & (y > 0)
    flat = np.flatnonzero(inside)
    rho_in, th_in = rho.ravel()[flat], th.ravel()[flat]
    fr = np.clip(rho_in * n_r - 0.5, 0.0, n_r - 1.0)
    ft = np.clip((th_in + a) / (2 * a) * (n_th - 1.0), 0.0, n_th - 1.0)
    r0 = np.minimum(np.floor(fr).astype(np.int64), n_r - 2)
    t0 = np.minimum(np.floor(ft).astype(np.int64), n_th - 2)
    dr, dt = fr - r0, ft - t0
    idx = np.stack([r0 * n_th + t0, r0 * n_th + t0 + 1, (r0 + 1) * n_th + t0, (r0 + 1) * n_th + t0 + 1])
    w = np.stack([(1 - dr) * (1 - dt), (1 - dr) * dt, dr * (1 - dt), dr * dt]).astype(np.float32)
    sm = ScanMap((out_h, out_w), flat, idx, w, rho_in.astype(np.float32), (th_in / a).astype(np.float32))
    for arr in (sm.inside, sm.idx, sm.w, sm.rho, sm.theta):
        arr.flags.writeable = False
    return sm


def scan_convert(polar: np.ndarray, sm: ScanMap) -> np.ndarray:
    """Resample a polar image (n_r, n_th) onto the Cartesian grid of `sm`; zero outside the cone."""
    flat = polar.ravel()
    vals = flat[sm.idx[0]] * sm.w[0]
    vals += flat[sm.idx[1]] * sm.w[1]
    vals += flat[sm.idx[2]] * sm.w[2]
    vals += flat[sm.idx[3]] * sm.w[3]
    out = np.zeros(sm.out_shape[0] * sm.out_shape[1], np.float32)
    out[sm.inside] = vals
    return out.reshape(sm.out_shape)


def cone_mask(sm: ScanMap) -> np.ndarray:
    """Boolean (H, W) mask of the pixels inside the cone."""
    m = np.zeros(sm.out_shape[0] * sm.out_shape[1], bool)
    m[sm.inside] = True
    return m.reshape(sm.out_shape)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8 with rounding (clipped)."""
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
