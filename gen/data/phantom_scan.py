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
from scipy.ndimage import correlate1d

# ----------------------------------------------------------------------------------------------
# Polar grids


@lru_cache(maxsize=128)
def coarse_grid(n_r: int, n_th: int, half_angle_deg: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-radius (x, y) of a half-resolution grid spanning the same first and last samples.

    Anatomy is smooth (soft edges of a few millimetres), so it is drawn on this grid and
    brought back with `upsample`: a quarter of the work for the same picture.
    """
    k_r, k_th = coarse_shape(n_r, n_th)
    a = math.radians(half_angle_deg)
    rho = ((np.linspace(0.0, n_r - 1.0, k_r) + 0.5) / n_r)[:, None]
    th = np.linspace(-a, a, k_th)[None, :]
    x = (rho * np.sin(th)).astype(np.float32)
    y = (rho * np.cos(th)).astype(np.float32)
    for arr in (x, y):
        arr.flags.writeable = False
    return x, y


def coarse_shape(n_r: int, n_th: int) -> tuple[int, int]:
    """Shape of the coarse grid for an n_r × n_th polar grid."""
    return max(8, (n_r + 1) // 2), max(8, (n_th + 1) // 2)


def upsample(a: np.ndarray, n_r: int, n_th: int) -> np.ndarray:
    """Bilinear upsampling of a (k_r, k_th) array to (n_r, n_th), end samples aligned.

    Gathers instead of matrix products: BLAS threads cost more than they save on arrays this
    small, especially when several renderers share the cores.
    """
    i0, f = _lerp_index(n_r, a.shape[0])
    rows = a[i0] * (1 - f)[:, None] + a[i0 + 1] * f[:, None]
    j0, g = _lerp_index(n_th, a.shape[1])
    return rows[:, j0] * (1 - g)[None, :] + rows[:, j0 + 1] * g[None, :]


@lru_cache(maxsize=128)
def _lerp_index(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For n samples spread over k knots: left knot index and fraction (float32)."""
    pos = np.linspace(0.0, k - 1.0, n)
    i0 = np.clip(np.floor(pos).astype(np.intp), 0, max(k - 2, 0))
    f = (pos - i0).astype(np.float32) if k > 1 else np.zeros(n, np.float32)
    if k == 1:
        i0 = np.zeros(n, np.intp)
    for arr in (i0, f):
        arr.flags.writeable = False
    return i0, f


def smooth_knots(knots: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Spread a small array of random knots bilinearly over `shape`: a smooth random field."""
    if knots.shape[0] == 1 or knots.shape[1] == 1:
        return _interp_matrix(shape[0], knots.shape[0]) @ knots @ _interp_matrix(shape[1], knots.shape[1]).T
    return upsample(knots, *shape)


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


# ----------------------------------------------------------------------------------------------
# Speckle and compression


def speckle_noise(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Complex scatterer field (2, n_r, n_th) float32: real and imaginary parts, zero mean, unit variance.

    Uniform rather than normal draws (several times cheaper): the PSF sums many of them per
    sample, so the echo is Gaussian anyway (central limit) and the speckle fully developed.
    """
    z = rng.random((2, *shape), dtype=np.float32)
    z -= np.float32(0.5)
    z *= np.float32(2 * math.sqrt(3.0))
    return z


def speckle_power(reflectivity: np.ndarray, scatter: np.ndarray, sigma_axial: float,
                  sigma_lateral: float) -> np.ndarray:
    """Echo power |h * (sqrt(R)·n)|² with an anisotropic Gaussian PSF h, normalised so E[power] = R.

    The reflectivity scales the scatterers *before* the PSF, so bright walls bleed into the
    neighbouring pools (the blurry myocardium of real B-mode), and the envelope of the complex
    sum is Rayleigh distributed: fully developed speckle. `sigma_lateral` is the lateral width
    in beams at the bottom of the image; the physical beam width grows with depth but less than
    the beam spacing does, so near the apex the PSF spans more beams (bands of rows, each with
    its own sigma, stand in for a depth-varying filter).
    """
    z = scatter * np.sqrt(reflectivity)[None]
    ka, ea = _kernel(sigma_axial)
    z = correlate1d(z, ka, axis=1, mode="nearest")
    n_r = z.shape[1]
    out = np.empty(z.shape[1:], np.float32)
    for lo, hi in _bands(n_r):
        r_mid = (lo + hi) / 2 / n_r
        kl, el = _kernel(sigma_lateral * (0.35 + 0.65 * r_mid) / max(r_mid, 0.05))
        zb = correlate1d(z[:, lo:hi], kl, axis=2, mode="nearest")
        np.add(zb[0] * zb[0], zb[1] * zb[1], out=out[lo:hi])
        out[lo:hi] *= np.float32(0.5 / (ea * el))
    return out


@lru_cache(maxsize=256)
def _kernel_cached(sigma_q: float) -> tuple[np.ndarray, float]:
    radius = max(1, int(2.5 * sigma_q + 0.5))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / max(sigma_q, 1e-3)) ** 2)
    k /= k.sum()
    k32 = k.astype(np.float32)
    k32.flags.writeable = False
    return k32, float(np.sum(k * k))


def _kernel(sigma: float) -> tuple[np.ndarray, float]:
    """Normalised Gaussian kernel (±2.5 sigma) and its sum of squares; sigma rounded so kernels cache."""
    return _kernel_cached(round(float(sigma), 2))


def _bands(n_r: int) -> list[tuple[int, int]]:
    edges = sorted({0, *(int(round(f * n_r)) for f in (0.1, 0.25, 0.5)), n_r})
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def log_compress(power: np.ndarray, white_db: float, dynamic_range_db: float, gamma: float,
                 pedestal: float = 0.0) -> np.ndarray:
    """Log compression to display values in [0, 1]: white_db maps to 1, white_db − DR to `pedestal`.

    A light [1, 2, 1] smoothing of the log image along both axes stands in for the speckle
    reduction every scanner applies after detection (real speckle is softer than raw Rayleigh).
    """
    db = 10.0 * np.log10(power + np.float32(1e-9))
    s = np.empty_like(db)
    s[1:-1] = db[1:-1] * 0.5 + (db[:-2] + db[2:]) * 0.25
    s[0], s[-1] = db[0], db[-1]
    db[:, 1:-1] = s[:, 1:-1] * 0.5 + (s[:, :-2] + s[:, 2:]) * 0.25
    db[:, 0], db[:, -1] = s[:, 0], s[:, -1]
    x = (db - np.float32(white_db - dynamic_range_db)) * np.float32(1.0 / dynamic_range_db)
    np.clip(x, 0.0, 1.0, out=x)
    if gamma != 1.0:
        x **= np.float32(gamma)
    if pedestal:
        x = np.float32(pedestal) + x * np.float32(1.0 - pedestal)
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
