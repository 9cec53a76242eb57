"""Exact k-nearest-neighbour search in chunks (torch), for image sets too large to hold pairwise.

The query set is cut into blocks of `chunk_query` rows and the reference set into blocks of
`chunk_ref` rows; only one block pair of distances (chunk_query × chunk_ref floats) and the
running top-k live in memory, and the sets themselves stay in their storage dtype (uint8 images
are converted block by block). So 32,000 × 31,000 images at 112×112 (12,544-d) need about
0.8 GB for the two uint8 sets plus a few hundred MB of working blocks.

Exactness: blocks are screened with the expanded form ‖q − r‖² = ‖q‖² + ‖r‖² − 2 qᵀr on
mean-centred data (centring keeps the cancellation small), keeping k + `margin` candidates,
and the candidates' distances are then recomputed from the differences q − r and re-ranked.
The returned neighbours are exact unless float32 screening error exceeds the gap between the
k-th and the (k + margin)-th candidate.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

METRICS = ("l2", "cosine")


def _rows(x) -> torch.Tensor:
    """An N×D view (no copy for contiguous numpy arrays / CPU tensors)."""
    t = torch.as_tensor(x)
    if t.ndim < 2:
        raise ValueError(f"expected an N×D array (or N×H×W images), got shape {tuple(t.shape)}")
    return t.reshape(t.shape[0], -1)


def _block(x: torch.Tensor, lo: int, hi: int, scale: float | None, center: torch.Tensor | None,
           metric: str, dtype: torch.dtype, device: torch.device, buf: torch.Tensor | None = None) -> torch.Tensor:
    """Rows lo:hi as `dtype` on `device`: scaled, then unit-norm (cosine) or centred (l2), in place in `buf`."""
    if buf is not None and buf.shape[0] >= hi - lo:
        b = buf[: hi - lo]
        b.copy_(x[lo:hi])  # converts in place: no fresh multi-hundred-MB allocation per block
    else:
        b = x[lo:hi].to(device=device, dtype=dtype, copy=True)  # never scale the caller's array in place
    if scale is not None:
        b.mul_(scale)
    if metric == "cosine":
        return b.div_(b.norm(dim=1, keepdim=True).clamp_min(1e-12))
    if center is not None:
        b.sub_(center)
    return b


def _column_mean(x: torch.Tensor, scale: float | None, chunk: int) -> torch.Tensor:
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    for lo in range(0, x.shape[0], chunk):
        total += x[lo:lo + chunk].to(torch.float64).sum(0)
    mean = total / max(1, x.shape[0])
    return mean * scale if scale is not None else mean


def _exact(q: torch.Tensor, r: torch.Tensor, metric: str) -> torch.Tensor:
    """Exact distances between q (B×D) and candidate rows r (B×K×D), in float64."""
    q, r = q.double(), r.double()
    if metric == "cosine":
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        r = r / r.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return 1.0 - (r * q[:, None, :]).sum(-1)
    return (r - q[:, None, :]).pow(2).sum(-1).sqrt()


@torch.no_grad()
def knn(query, ref, k: int, *, metric: str = "l2", scale: float | None = None, exclude_self: bool = False,
        chunk_query: int = 2048, chunk_ref: int = 4096, margin: int = 8, dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu", progress: bool = False, desc: str = "nearest neighbours",
        ) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest reference rows of every query row: (distances N×k float64, indices N×k int64).

    metric: "l2" (Euclidean) or "cosine" (1 − cosine similarity). `scale` multiplies the stored
    values first (1/255 turns uint8 images into [0, 1]). `exclude_self` treats `query` and
    `ref` as the same set and skips each row's own index. Rows come sorted by distance.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    q_all, r_all = _rows(query), _rows(ref)
    if q_all.shape[1] != r_all.shape[1]:
        raise ValueError(f"query rows have {q_all.shape[1]} values but reference rows have {r_all.shape[1]} "
                         "(images of different sizes? resize both sets to one size)")
    if exclude_self and q_all.shape[0] != r_all.shape[0]:
        raise ValueError("exclude_self needs the query and reference to be the same set")
    n_ref = r_all.shape[0] - (1 if exclude_self else 0)
    if k < 1 or k > n_ref:
        raise ValueError(f"cannot find {k} nearest neighbours among {n_ref} reference rows")
    if q_all.shape[0] == 0:
        return np.zeros((0, k)), np.zeros((0, k), dtype=np.int64)
    device = torch.device(device)
    ks = min(k + margin, n_ref)
    center = None
    if metric == "l2":
        center = _column_mean(r_all, scale, chunk_ref).to(device=device, dtype=dtype)

    out_d = np.empty((q_all.shape[0], k))
    out_i = np.empty((q_all.shape[0], k), dtype=np.int64)
    rbuf = torch.empty((min(chunk_ref, r_all.shape[0]), r_all.shape[1]), dtype=dtype, device=device)
    starts = range(0, q_all.shape[0], chunk_query)
    for q0 in tqdm(starts, desc=desc, unit="block", disable=not progress, leave=False):
        q1 = min(q0 + chunk_query, q_all.shape[0])
        qb = _block(q_all, q0, q1, scale, center, metric, dtype, device)
        qn = (qb * qb).sum(1, keepdim=True) if metric == "l2" else None
        best_d = torch.empty((q1 - q0, 0), dtype=dtype, device=device)
        best_i = torch.empty((q1 - q0, 0), dtype=torch.long, device=device)
        for r0 in range(0, r_all.shape[0], chunk_ref):
            r1 = min(r0 + chunk_ref, r_all.shape[0])
            rb = _block(r_all, r0, r1, scale, center, metric, dtype, device, rbuf)
            if metric == "l2":  # ‖q‖² + ‖r‖² − 2 qᵀr, one matmul and one in-place add
                d = torch.addmm(torch.linalg.vector_norm(rb, dim=1).square_()[None, :], qb, rb.T, alpha=-2.0).add_(qn)
            else:
                d = torch.addmm(torch.ones((1, 1), dtype=dtype, device=device), qb, rb.T, alpha=-1.0)
            if exclude_self and r0 < q1 and q0 < r1:  # this block pair holds part of the diagonal
                rows = torch.arange(max(q0, r0), min(q1, r1), device=device)
                d[rows - q0, rows - r0] = float("inf")
            # the block's own best first (no index matrix of the whole block), then merge with the running best
            d_top, pos = torch.topk(d, min(ks, d.shape[1]), dim=1, largest=False, sorted=False)
            cat_d, cat_i = torch.cat([best_d, d_top], 1), torch.cat([best_i, pos + r0], 1)
            best_d, sel = torch.topk(cat_d, min(ks, cat_d.shape[1]), dim=1, largest=False, sorted=False)
            best_i = torch.gather(cat_i, 1, sel)
        exact_d, exact_i = _refine(q_all, r_all, q0, best_i.cpu(), scale, metric, device)
        order = torch.argsort(exact_d, dim=1, stable=True)[:, :k]
        out_d[q0:q1] = torch.gather(exact_d, 1, order).numpy()
        out_i[q0:q1] = torch.gather(exact_i, 1, order).numpy()
    return out_d, out_i


def _refine(q_all: torch.Tensor, r_all: torch.Tensor, q0: int, cand: torch.Tensor, scale: float | None,
            metric: str, device: torch.device, budget_bytes: int = 64 << 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact float64 distances of each query row to its candidate rows (CPU tensors out)."""
    n, ks = cand.shape
    dim = q_all.shape[1]
    step = max(1, budget_bytes // max(1, ks * dim * 8))
    dist = torch.empty((n, ks), dtype=torch.float64)
    for a in range(0, n, step):
        b = min(a + step, n)
        q = q_all[q0 + a:q0 + b].to(device=device, dtype=torch.float64)
        r = r_all[cand[a:b].reshape(-1)].to(device=device, dtype=torch.float64).reshape(b - a, ks, dim)
        if scale is not None:
            q, r = q * scale, r * scale
        dist[a:b] = _exact(q, r, metric).cpu()
    return dist, cand


@torch.no_grad()
def knn_radius_counts(query, ref, radii, *, chunk_query: int = 2048, chunk_ref: int = 8192,
                      dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> np.ndarray:
    """For each query row, how many reference rows j have ‖q − r_j‖ ≤ radii[j] (Euclidean, chunked)."""
    q_all, r_all = _rows(query), _rows(ref)
    radii = torch.as_tensor(np.asarray(radii), dtype=dtype)
    if radii.shape != (r_all.shape[0],):
        raise ValueError(f"need one radius per reference row ({r_all.shape[0]}), got {tuple(radii.shape)}")
    if q_all.shape[1] != r_all.shape[1]:
        raise ValueError(f"query rows have {q_all.shape[1]} values but reference rows have {r_all.shape[1]}")
    device = torch.device(device)
    center = _column_mean(r_all, None, chunk_ref).to(device=device, dtype=dtype)
    counts = np.zeros(q_all.shape[0], dtype=np.int64)
    r2 = (radii.to(device) ** 2)
    for q0 in range(0, q_all.shape[0], chunk_query):
        q1 = min(q0 + chunk_query, q_all.shape[0])
        qb = _block(q_all, q0, q1, None, center, "l2", dtype, device)
        qn = (qb * qb).sum(1, keepdim=True)
        c = torch.zeros(q1 - q0, dtype=torch.long, device=device)
        for r0 in range(0, r_all.shape[0], chunk_ref):
            r1 = min(r0 + chunk_ref, r_all.shape[0])
            rb = _block(r_all, r0, r1, None, center, "l2", dtype, device)
            d2 = (qn + (rb * rb).sum(1)[None, :] - 2.0 * (qb @ rb.T)).clamp_min_(0)
            c += (d2 <= r2[r0:r1][None, :]).sum(1)
        counts[q0:q1] = c.cpu().numpy()
    return counts
