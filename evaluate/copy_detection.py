"""Copy detection: nearest training images of each synthetic image, the distances that judge them, and the flag rule.

Spaces (all against the training set):

- pixel L2 on [0, 1] (`dcr_pixel_l2`): exact, chunked (`echosynth.evaluate.neighbours.knn`); its 50 nearest give
  the nearest-neighbour distance ratio and the Carlini et al. (2023) criterion;
- tolerant pixel distance (`dcr_pixel`, the one that flags): min over translations
  |dy|, |dx| ≤ `max_shift` of √(2 − 2ρ), ρ the Pearson correlation of the overlapping pixels, so
  small shifts and brightness/contrast changes of a copy do not hide it. It is computed exactly
  for candidates: the 5 L2-nearest plus the nearest to any small translation after standardising
  at low resolution (`screen_candidates`). A copy whose source is not among the candidates would
  be missed; the planted-copy test measures that;
- echo features, cosine distance (`dcr_feature`), when a classifier is given.

The flag rule (documented in docs/evaluation.md, "Privacy"): an image is flagged when, in any space
used, its distance to the closest record is below that space's τ, or when it meets the Carlini
criterion d₁ < α · mean(d₁…d₅₀) (α = 0.5). The τ's are calibrated on held-out real images
(which are not copies): each τ is the same percentile q of its space's held-out→train distances,
with q the largest level at which the whole rule flags at most `percentile`% of held-out images
(one space and no Carlini flags: q = `percentile`, the EchoNet-Synthetic-style rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from echosynth.evaluate.neighbours import knn


@dataclass
class Nearest:
    """Distances and training indices of one query set's nearest records, per space (rows align with queries)."""

    l2: np.ndarray  # (N, k) sorted pixel L2 distances
    l2_idx: np.ndarray  # (N, k)
    shift: np.ndarray  # (N,) shift-tolerant pixel DCR
    shift_idx: np.ndarray  # (N,) training index achieving it
    shift_offset: np.ndarray  # (N, 2) (dy, dx) achieving it
    feat: np.ndarray | None = None  # (N, 2) cosine distances
    feat_idx: np.ndarray | None = None  # (N, 2)



def _standardize(x: torch.Tensor) -> torch.Tensor:
    """Rows centred and scaled to unit norm (the last dimension), so ‖û − v̂‖² = 2 − 2ρ(u, v)."""
    x = x - x.mean(-1, keepdim=True)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def standardized(images: np.ndarray, size: int | None = None, shift: tuple[int, int] = (0, 0),
                 chunk: int = 4096) -> np.ndarray:
    """uint8 N×H×W → float32 N×D rows: shifted (q(y + dy, x + dx), edges replicated), area-downsampled
    to size×size, centred and scaled to unit norm."""
    dy, dx = shift
    s = max(abs(dy), abs(dx))
    out = []
    for lo in range(0, len(images), chunk):
        x = torch.from_numpy(images[lo:lo + chunk]).float().div_(255.0).unsqueeze(1)
        if s:
            h, w = x.shape[-2:]
            x = F.pad(x, (s, s, s, s), mode="replicate")[..., s + dy:s + dy + h, s + dx:s + dx + w]
        if size is not None and size < images.shape[-1]:
            x = F.adaptive_avg_pool2d(x, size)
        out.append(_standardize(x.flatten(1)).numpy())
    return np.concatenate(out) if out else np.zeros((0, (size or images.shape[-1]) ** 2), np.float32)


def screening_shifts(max_shift: int, image_size: int, lowres_size: int) -> list[int]:
    """Shifts (per axis) searched at low resolution: every pixel in [−s, s] when a pixel is a large part
    of a low-resolution pixel, coarser when downsampling averages it away (112 → 16 px: −2, 0, 2)."""
    pool = max(1.0, image_size / lowres_size)
    spacing = max(1.0, pool / 2)  # a residual shift ≤ spacing/2 px moves the low-res image ≤ 1/4 of its pixel
    m = int(np.ceil(2 * max_shift / spacing)) + 1 if max_shift else 1
    return sorted({int(round(v)) for v in np.linspace(-max_shift, max_shift, m)})


def screen_candidates(query: np.ndarray, train: np.ndarray, k: int, max_shift: int, size: int,
                      device: str | torch.device = "cpu", progress: bool = False, what: str = "") -> np.ndarray:
    """The k training images nearest to any small translation of each query, standardised at low resolution.

    Shifted versions of the queries (`screening_shifts`) are searched (cosine on centred,
    unit-norm size×size images, so brightness/contrast changes do not matter), and each query
    keeps the k best distinct training indices over all shifts: (N, k).
    """
    ref = standardized(train, size)
    k = min(k, len(train))
    ds, idx = [], []
    steps = screening_shifts(max_shift, query.shape[-1], size)
    offsets = [(dy, dx) for dy in steps for dx in steps]
    for off in tqdm(offsets, desc=f"{what}→train screening", unit="shift", disable=not progress, leave=False):
        d, i = knn(standardized(query, size, off), ref, k, metric="cosine", device=device)
        ds.append(d)
        idx.append(i)
    d, i = np.concatenate(ds, 1), np.concatenate(idx, 1)
    order = np.argsort(d, 1, kind="stable")
    i = np.take_along_axis(i, order, 1)
    out = np.empty((len(query), k), dtype=np.int64)
    for r in range(len(query)):  # first k distinct indices in distance order
        _, first = np.unique(i[r], return_index=True)
        out[r] = i[r][np.sort(first)[:k]]
    return out


@torch.no_grad()
def tolerant_distance(query: np.ndarray, train: np.ndarray, cand: np.ndarray, max_shift: int,
                      device: str | torch.device = "cpu", budget_bytes: int = 128 << 20,
                      progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shift- and intensity-tolerant distance to candidate training images, exactly (float64).

    d(q, t) = min over |dy|, |dx| ≤ s of √(2 − 2ρ), with ρ the Pearson correlation between
    q(y + dy, x + dx) and t(y, x) over the pixels where both exist (the overlap). Correlation
    ignores gain and offset, so d is 0 for a copy up to brightness/contrast and a small
    translation, and lies in [0, 2]. Returns (distance (N,), training index (N,), offset (dy, dx) (N, 2)).
    """
    n, h, w = query.shape
    k = cand.shape[1]
    s = max_shift
    offsets = [(dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1)]
    device = torch.device(device)
    # the overlap of a shift is a rectangle in the training image: rows of dy × columns of dx
    d = torch.arange(-s, s + 1, device=device)
    ys, xs = torch.arange(h, device=device), torch.arange(w, device=device)
    rows = ((ys[None] >= (-d).clamp_min(0)[:, None]) & (ys[None] < (h - d).clamp_max(h)[:, None])).double()
    cols = ((xs[None] >= (-d).clamp_min(0)[:, None]) & (xs[None] < (w - d).clamp_max(w)[:, None])).double()
    count = (rows.sum(1)[:, None] * cols.sum(1)[None, :]).reshape(-1)  # (S,), offsets in (dy, dx) order
    step = max(1, budget_bytes // ((len(offsets) + 3 * k) * h * w * 8))
    dist, arg, off = np.empty(n), np.empty(n, dtype=np.int64), np.empty((n, 2), dtype=np.int64)
    for a in tqdm(range(0, n, step), desc="tolerant distances", unit="block", disable=not progress, leave=False):
        b = min(a + step, n)
        q = torch.from_numpy(query[a:b]).to(device, torch.float64)
        qp = F.pad(q, (s, s, s, s)) if s else q  # zeros outside the image: exactly the overlap survives
        qs = torch.stack([qp[:, s + dy:s + dy + h, s + dx:s + dx + w] for dy, dx in offsets], 1)
        qs = qs.reshape(b - a, len(offsets), h * w)  # (B, S, D)
        t = torch.from_numpy(train[cand[a:b].reshape(-1)]).to(device, torch.float64).reshape(b - a, k, h, w)
        st, stt = _rect_sums(t, rows, cols), _rect_sums(t * t, rows, cols)  # (B, S, K)
        sq, sqq = qs.sum(-1), (qs * qs).sum(-1)  # (B, S)
        sqt = torch.bmm(qs, t.reshape(b - a, k, h * w).transpose(1, 2))  # (B, S, K)
        c = count[None, :, None]
        cov = sqt - sq[:, :, None] * st / c
        var = (sqq[:, :, None] - sq[:, :, None] ** 2 / c).clamp_min(0) * (stt - st ** 2 / c).clamp_min(0)
        rho = torch.where(var > 0, cov / var.clamp_min(1e-300).sqrt(), torch.zeros_like(cov))
        best, flat = rho.reshape(b - a, -1).max(1)
        si, ci = (flat // k).cpu().numpy(), (flat % k).cpu().numpy()
        dist[a:b] = (2.0 - 2.0 * best).clamp_min(0).sqrt().cpu().numpy()
        arg[a:b] = cand[a:b][np.arange(b - a), ci]
        off[a:b] = np.array(offsets)[si]
    return dist, arg, off


def _rect_sums(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Sums of (B, K, H, W) over every rows[i] × cols[j] indicator rectangle, as (B, S = i·j, K) (two matmuls)."""
    v = rows @ (x @ cols.T)  # (B, K, nr, nc)
    return v.flatten(2).transpose(1, 2)


def nearest_records(query: np.ndarray, train: np.ndarray, *, k: int = 50, max_shift: int = 2,
                    shift_candidates: int = 20, lowres_size: int = 16, query_feats: np.ndarray | None = None,
                    train_feats: np.ndarray | None = None, device: str | torch.device = "cpu",
                    progress: bool = False, what: str = "synthetic") -> Nearest:
    """Nearest training records of uint8 query images in every space (see the module docstring)."""
    if query.shape[1:] != train.shape[1:]:
        raise ValueError(f"{what} images are {query.shape[1]}×{query.shape[2]} but training images are "
                         f"{train.shape[1]}×{train.shape[2]}; pass --size N to resize both")
    k = min(k, len(train))
    d, i = knn(query, train, k, scale=1 / 255, device=device, progress=progress, desc=f"{what}→train pixels")
    # candidates: the few L2 nearest plus the nearest to any small translation after standardising
    # at low resolution, where brightness/contrast changes cancel and shifts are searched
    screened = screen_candidates(query, train, shift_candidates, max_shift, lowres_size, device, progress, what)
    cand = np.concatenate([i[:, :min(5, k)], screened], 1)
    sd, si, so = tolerant_distance(query, train, cand, max_shift, device=device, progress=progress)
    fd = fi = None
    if query_feats is not None and train_feats is not None:
        fd, fi = knn(query_feats, train_feats, min(2, len(train)), metric="cosine", device=device)
    return Nearest(d, i, sd, si, so, fd, fi)


# ----------------------------------------------------------------------------------------------
# Per-image scores and the flag rule


def nndr(d: np.ndarray) -> np.ndarray:
    """Nearest-neighbour distance ratio d₁ / d₂ (1 where d₂ = 0 or missing)."""
    if d.shape[1] < 2:
        return np.ones(d.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        r = d[:, 0] / d[:, 1]
    return np.where(d[:, 1] > 0, r, 1.0)


def carlini_ratio(d: np.ndarray, alpha: float = 0.5, n: int = 50) -> np.ndarray:
    """Carlini et al. (2023): ℓ = d₁ / (α · mean(d₁…dₙ)); a generated image is memorised when ℓ < 1."""
    m = d[:, :n].mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(m > 0, d[:, 0] / (alpha * m), 0.0)


def scores(nb: Nearest, alpha: float, carlini_n: int) -> dict[str, np.ndarray]:
    """Per-image distances: pixel (shift-tolerant), pixel_l2, feature (if any), nndr_*, carlini."""
    out = {"pixel": nb.shift, "pixel_l2": nb.l2[:, 0], "nndr_pixel": nndr(nb.l2),
           "carlini": carlini_ratio(nb.l2, alpha, carlini_n)}
    if nb.feat is not None:
        out["feature"] = nb.feat[:, 0]
        out["nndr_feature"] = nndr(nb.feat)
    return out


def flag(s: dict[str, np.ndarray], tau: dict[str, float], use_carlini: bool) -> dict[str, np.ndarray]:
    """Boolean flags per reason (one per thresholded space, plus carlini) and `any`."""
    reasons = {space: s[space] < t for space, t in tau.items()}
    if use_carlini:
        reasons["carlini"] = s["carlini"] < 1.0
    n = len(s["pixel"])
    reasons["any"] = np.logical_or.reduce(list(reasons.values())) if reasons else np.zeros(n, bool)
    return reasons


def calibrate(holdout: dict[str, np.ndarray], spaces: list[str], percentile: float, use_carlini: bool,
              iters: int = 60) -> tuple[dict[str, float], float]:
    """τ per space at one common percentile q of the held-out→train distances, the largest q ≤ `percentile`
    at which the whole rule flags at most `percentile`% of held-out images. Returns (τ, q)."""
    target = percentile / 100.0

    def taus(q: float) -> dict[str, float]:
        return {sp: float(np.percentile(holdout[sp], q)) for sp in spaces}

    def rate(q: float) -> float:
        return float(flag(holdout, taus(q), use_carlini)["any"].mean())

    if rate(percentile) <= target:
        return taus(percentile), percentile
    lo, hi = 0.0, percentile  # rate(lo) may already exceed the target through Carlini alone
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rate(mid) <= target else (lo, mid)
    return taus(lo), lo


def summary(values: np.ndarray) -> dict:
    """n, mean and percentiles (0, 1, 5, 25, 50, 75, 100) of a distance array."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return {"n": 0}
    p = np.percentile(v, [0, 1, 5, 25, 50, 75, 100])
    return {"n": int(len(v)), "mean": float(v.mean()), "min": float(p[0]), "p01": float(p[1]), "p05": float(p[2]),
            "p25": float(p[3]), "median": float(p[4]), "p75": float(p[5]), "max": float(p[6])}
