"""Distribution metrics between real and synthetic feature sets: FID, KID, precision/recall, density/coverage.

All maths runs in float64 on features (N×D arrays). Moments are accumulated as sums and sums of
outer products (`FeatureStats`), so statistics from several processes or batches combine by
addition, as EDM's `fid.py` does, and FID never needs the features themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from echosynth.evaluate.neighbours import knn, knn_radius_counts

# ----------------------------------------------------------------------------------------------
# Moments


@dataclass
class FeatureStats:
    """Running n, Σx and Σxxᵀ of feature vectors (float64): mergeable across batches and ranks."""

    n: int
    sum: np.ndarray  # (D,)
    outer: np.ndarray  # (D, D)

    @classmethod
    def empty(cls, dim: int) -> FeatureStats:
        """Zero statistics for D-dimensional features."""
        return cls(0, np.zeros(dim), np.zeros((dim, dim)))

    @classmethod
    def of(cls, feats: np.ndarray) -> FeatureStats:
        """Statistics of an N×D feature array."""
        s = cls.empty(_as_2d(feats).shape[1])
        s.update(feats)
        return s

    def update(self, feats: np.ndarray) -> None:
        """Add a batch of N×D features."""
        f = _as_2d(feats).astype(np.float64, copy=False)
        if f.shape[1] != self.sum.shape[0]:
            raise ValueError(f"feature dimension {f.shape[1]} does not match the statistics' {self.sum.shape[0]}")
        self.n += f.shape[0]
        self.sum += f.sum(axis=0)
        self.outer += f.T @ f

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Statistics of the union of two disjoint sets (sums add)."""
        return FeatureStats(self.n + other.n, self.sum + other.sum, self.outer + other.outer)

    @property
    def mean(self) -> np.ndarray:
        """μ = Σx / n."""
        return self.sum / self.n

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance Σ = (Σxxᵀ − n μμᵀ) / (n − 1)."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.n}")
        mu = self.mean
        c = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return (c + c.T) / 2  # exact symmetry despite rounding


def _as_2d(feats: np.ndarray) -> np.ndarray:
    f = np.asarray(feats)
    if f.ndim != 2:
        raise ValueError(f"features must be an N×D array, got shape {f.shape}")
    return f


def _check_set(name: str, feats: np.ndarray, at_least: int) -> np.ndarray:
    f = _as_2d(feats)
    if f.shape[0] < at_least:
        raise ValueError(f"{name} set has {f.shape[0]} feature vectors; this metric needs at least {at_least}")
    if not np.isfinite(f).all():
        raise ValueError(f"{name} features contain NaN or infinite values")
    return f


# ----------------------------------------------------------------------------------------------
# Fréchet distance


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix via eigh, negative rounding eigenvalues clipped to 0."""
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance between Gaussians: d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^{1/2}).

    Tr (Σ₁Σ₂)^{1/2} is computed as the nuclear norm ‖Σ₁^{1/2} Σ₂^{1/2}‖_* (the eigenvalues of
    Σ₁Σ₂ are the squared singular values of Σ₁^{1/2}Σ₂^{1/2}). Unlike `scipy.linalg.sqrtm` of
    the non-symmetric product, this never goes complex and stays accurate for the rank-deficient
    covariances of sets smaller than the feature dimension, so FID(x, x) is 0 to rounding.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched statistics: means {mu1.shape} / {mu2.shape}, covariances {cov1.shape} / {cov2.shape}")
    s1, s2 = _psd_sqrt(cov1), _psd_sqrt(cov2)
    tr_sqrt = np.linalg.svd(s1 @ s2, compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt)


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """FID between two accumulated feature statistics."""
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


def frechet_distance_samples(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance from the samples themselves, for sets smaller than the feature dimension.

    With Aᵢ = (Xᵢ − μᵢ)/√(nᵢ − 1), Σᵢ = AᵢᵀAᵢ, so Tr Σᵢ = ‖Aᵢ‖²_F and Tr (Σ₁Σ₂)^{1/2} = ‖A₁A₂ᵀ‖_*
    (the singular values of Σ₁^{1/2}Σ₂^{1/2} and of A₁A₂ᵀ coincide): an n₁×n₂ problem
    instead of a D×D one.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mu1, mu2 = x.mean(0), y.mean(0)
    a1, a2 = (x - mu1) / np.sqrt(x.shape[0] - 1), (y - mu2) / np.sqrt(y.shape[0] - 1)
    tr_sqrt = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff @ diff + (a1 * a1).sum() + (a2 * a2).sum() - 2.0 * tr_sqrt)


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two N×D feature arrays in float64: from samples when both sets are smaller than D, else from moments."""
    real, fake = _check_set("real", real, 2), _check_set("fake", fake, 2)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: real {real.shape[1]}, fake {fake.shape[1]}")
    if max(real.shape[0], fake.shape[0]) <= real.shape[1]:
        return frechet_distance_samples(real, fake)
    return fid_from_stats(FeatureStats.of(real), FeatureStats.of(fake))


# ----------------------------------------------------------------------------------------------
# Kernel inception distance


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's cubic kernel k(x, y) = (xᵀy / D + 1)³."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD²: mean_{i≠j} k(xᵢ,xⱼ) + mean_{i≠j} k(yᵢ,yⱼ) − 2 mean_{i,j} k(xᵢ,yⱼ)."""
    m, n = x.shape[0], y.shape[0]
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float, int]:
    """KID (Bińkowski et al. 2018): unbiased MMD² with the cubic kernel, mean and std over random subsets.

    Each of `subsets` draws takes `subset_size` rows (capped at the smaller set) without
    replacement from each set. Returns (mean, std, the subset size used).
    """
    real, fake = _check_set("real", real, 2).astype(np.float64), _check_set("fake", fake, 2).astype(np.float64)
    size = min(subset_size, real.shape[0], fake.shape[0])
    rng = np.random.default_rng(seed)
    vals = np.empty(subsets)
    for i in range(subsets):
        r = real[rng.choice(real.shape[0], size, replace=False)]
        f = fake[rng.choice(fake.shape[0], size, replace=False)]
        vals[i] = mmd2_unbiased(r, f)
    return float(vals.mean()), float(vals.std()), size


# ----------------------------------------------------------------------------------------------
# Manifold metrics


def knn_radii(feats: np.ndarray, k: int, device: str = "cpu") -> np.ndarray:
    """Distance from each row to its k-th nearest other row (Euclidean), the radius of its k-NN ball."""
    if feats.shape[0] <= k:
        raise ValueError(f"a k-NN radius with k={k} needs more than {k} feature vectors, got {feats.shape[0]}")
    d, _ = knn(feats, feats, k, exclude_self=True, device=device)
    return d[:, -1]


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, device: str = "cpu") -> tuple[float, float]:
    """Improved precision/recall (Kynkäänniemi et al. 2019) with k-NN balls.

    precision = (1/M) Σ_j 1[∃i: ‖y_j − x_i‖ ≤ r_k(x_i)]   (fakes inside the real manifold)
    recall    = (1/N) Σ_i 1[∃j: ‖x_i − y_j‖ ≤ r_k(y_j)]   (reals inside the fake manifold)
    where r_k(·) is the distance to the k-th nearest neighbour within the same set.
    """
    real, fake = _check_set("real", real, k + 1), _check_set("fake", fake, k + 1)
    r_real, r_fake = knn_radii(real, k, device), knn_radii(fake, k, device)
    precision = (knn_radius_counts(fake, real, r_real, device=device) > 0).mean()
    recall = (knn_radius_counts(real, fake, r_fake, device=device) > 0).mean()
    return float(precision), float(recall)


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5, device: str = "cpu") -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020) with k-NN balls around real samples.

    density  = 1/(kM) Σ_j Σ_i 1[‖y_j − x_i‖ ≤ r_k(x_i)]
    coverage = 1/N Σ_i 1[∃j: ‖y_j − x_i‖ ≤ r_k(x_i)]
    """
    real, fake = _check_set("real", real, k + 1), _check_set("fake", fake, 1)
    r_real = knn_radii(real, k, device)
    density = knn_radius_counts(fake, real, r_real, device=device).sum() / (k * fake.shape[0])
    # coverage: a real point is covered when its nearest fake lies inside its own ball
    d_nearest_fake, _ = knn(real, fake, 1, device=device)
    coverage = (d_nearest_fake[:, 0] <= r_real).mean()
    return float(density), float(coverage)


def subsample(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of `size` out of n (all of them if size ≥ n)."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def all_metrics(real: np.ndarray, fake: np.ndarray, *, pr_k: int = 3, dc_k: int = 5, kid_subsets: int = 100,
                kid_subset_size: int = 1000, max_manifold: int = 10000, seed: int = 0,
                device: str = "cpu", fid_value: float | None = None) -> dict:
    """FID, KID, precision/recall and density/coverage of one real/fake feature pair.

    Manifold metrics cost O(N²): each set is subsampled to `max_manifold` rows (seeded; 0 keeps
    all). A metric that the set sizes cannot support is None, with the reason under `notes`.
    """
    real, fake = _as_2d(real), _as_2d(fake)
    out: dict = {"n_real": int(real.shape[0]), "n_fake": int(fake.shape[0])}
    notes = []
    if min(real.shape[0], fake.shape[0]) >= 2:
        out["fid"] = fid(real, fake) if fid_value is None else float(fid_value)
        out["kid"], out["kid_std"], out["kid_subset_size"] = kid(real, fake, kid_subsets, kid_subset_size, seed)
    else:
        out.update(fid=None, kid=None, kid_std=None, kid_subset_size=None)
        notes.append("fid/kid need at least 2 images per set")
    if max_manifold:
        real_m = real[subsample(real.shape[0], max_manifold, seed)]
        fake_m = fake[subsample(fake.shape[0], max_manifold, seed + 1)]
    else:
        real_m, fake_m = real, fake
    if min(real_m.shape[0], fake_m.shape[0]) > pr_k:
        out["precision"], out["recall"] = precision_recall(real_m, fake_m, pr_k, device)
    else:
        out.update(precision=None, recall=None)
        notes.append(f"precision/recall need more than k={pr_k} images per set")
    if real_m.shape[0] > dc_k and fake_m.shape[0] >= 1:
        out["density"], out["coverage"] = density_coverage(real_m, fake_m, dc_k, device)
    else:
        out.update(density=None, coverage=None)
        notes.append(f"density/coverage need more than k={dc_k} real images")
    out["n_manifold"] = [int(real_m.shape[0]), int(fake_m.shape[0])]
    if notes:
        out["notes"] = notes
    return out

