"""Fidelity maths and chunked nearest neighbours against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import cdist

from echosynth.evaluate.metrics import (
    FeatureStats,
    all_metrics,
    density_coverage,
    fid,
    frechet_distance,
    frechet_distance_samples,
    kid,
    mmd2_unbiased,
    precision_recall,
)
from echosynth.evaluate.neighbours import knn, knn_radius_counts


def _gauss(n, d, seed, shift=0.0, scale=1.0):
    """n samples of one fixed correlated Gaussian per dimension d (the seed picks the samples)."""
    a = np.random.default_rng(1000 + d).normal(size=(d, d)) / np.sqrt(d)
    return np.random.default_rng(seed).normal(size=(n, d)) @ a * scale + shift


def _sqrtm_fid(x, y):
    """pytorch-fid's textbook formula: scipy.linalg.sqrtm of Σ₁Σ₂."""
    mu1, mu2 = x.mean(0), y.mean(0)
    c1, c2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean))


# ----------------------------------------------------------------------------------------------
# FID


@pytest.mark.parametrize("d", [4, 16, 64])
def test_fid_matches_scipy_sqrtm(d):
    x, y = _gauss(400, d, 0), _gauss(300, d, 1, shift=0.3, scale=1.3)
    assert fid(x, y) == pytest.approx(_sqrtm_fid(x, y), rel=1e-8, abs=1e-9)


def test_fid_matches_torchmetrics_with_custom_feature_module():
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Identity(torch.nn.Module):
        num_features = 32

        def forward(self, x):
            return x

    x, y = _gauss(250, 32, 2), _gauss(200, 32, 3, shift=-0.5)
    m = FrechetInceptionDistance(feature=Identity(), normalize=True)
    m.set_dtype(torch.float64)
    m.update(torch.from_numpy(x), real=True)
    m.update(torch.from_numpy(y), real=False)
    assert fid(x, y) == pytest.approx(float(m.compute()), rel=1e-7)


@pytest.mark.parametrize("n,d", [(500, 64), (50, 128), (40, 768), (12, 2048)])
def test_fid_of_a_set_with_itself_is_zero(n, d):
    x = np.abs(_gauss(n, d, 4)) * 3  # non-negative like post-ReLU features; n < d is rank-deficient
    assert abs(fid(x, x)) < 1e-6


def test_fid_of_a_set_with_itself_is_zero_from_moments():
    """The D×D path (all-reduced statistics) on a rank-deficient covariance."""
    x = np.abs(_gauss(60, 256, 5)) * 3
    s = FeatureStats.of(x)
    assert abs(frechet_distance(s.mean, s.cov, s.mean, s.cov)) < 1e-6


@pytest.mark.parametrize("n1,n2,d", [(30, 20, 64), (100, 80, 16)])
def test_sample_space_and_moment_paths_agree(n1, n2, d):
    x, y = np.abs(_gauss(n1, d, 30)), np.abs(_gauss(n2, d, 31, shift=0.2))
    by_moments = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    # the moment path loses ~1e-8 (relative) to the square roots of a rank-deficient covariance's
    # zero eigenvalues; the sample path does not take them
    assert frechet_distance_samples(x, y) == pytest.approx(by_moments, rel=1e-7)
    assert fid(x, y) == pytest.approx(by_moments, rel=1e-7)


def test_fid_equals_squared_shift_and_grows_with_it():
    x = _gauss(300, 24, 5)
    direction = np.random.default_rng(6).normal(size=24)
    direction /= np.linalg.norm(direction)
    values = [fid(x, x + s * direction) for s in (0.0, 0.5, 1.0, 2.0, 4.0)]
    # a constant shift keeps the covariance, so FID is exactly ‖δ‖²
    assert values == pytest.approx([0.0, 0.25, 1.0, 4.0, 16.0], abs=1e-7)
    assert all(a < b for a, b in zip(values, values[1:]))


def test_feature_stats_merge_equals_whole_set():
    x = _gauss(301, 10, 7)
    whole = FeatureStats.of(x)
    parts = FeatureStats.of(x[:100]).merge(FeatureStats.of(x[100:250])).merge(FeatureStats.of(x[250:]))
    assert parts.n == 301
    np.testing.assert_allclose(parts.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(parts.cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(whole.cov, parts.cov, rtol=1e-10, atol=1e-12)


def test_frechet_distance_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_empty_or_tiny_sets_give_clear_errors():
    with pytest.raises(ValueError, match="at least 2"):
        fid(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="N×D"):
        fid(np.zeros(4), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="NaN"):
        fid(np.full((3, 2), np.nan), np.zeros((5, 2)))


# ----------------------------------------------------------------------------------------------
# KID


def test_mmd_matches_a_direct_double_sum():
    x, y = _gauss(20, 5, 8), _gauss(15, 5, 9, shift=0.2)

    def k(a, b):
        return (a @ b / 5 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(20) for j in range(20) if i != j) / (20 * 19)
    yy = sum(k(y[i], y[j]) for i in range(15) for j in range(15) if i != j) / (15 * 14)
    xy = sum(k(x[i], y[j]) for i in range(20) for j in range(15)) / (20 * 15)
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_kid_full_subset_matches_torchmetrics():
    from torchmetrics.image.kid import KernelInceptionDistance

    class Identity(torch.nn.Module):
        num_features = 8

        def forward(self, x):
            return x

    x, y = _gauss(60, 8, 10), _gauss(60, 8, 11, shift=0.4)
    m = KernelInceptionDistance(feature=Identity(), subsets=2, subset_size=60, normalize=True)
    m.update(torch.from_numpy(x), real=True)
    m.update(torch.from_numpy(y), real=False)
    ref_mean, _ = m.compute()
    mean, std, size = kid(x, y, subsets=3, subset_size=1000)
    assert size == 60 and std == pytest.approx(0.0, abs=1e-12)  # every subset is the whole set
    assert mean == pytest.approx(float(ref_mean), rel=1e-6)


def test_kid_near_zero_for_same_distribution_and_positive_for_shift():
    x, y = _gauss(400, 16, 12), _gauss(400, 16, 13)
    same, _, _ = kid(x, y, subsets=20, subset_size=200)
    shifted, _, _ = kid(x, y + 1.0, subsets=20, subset_size=200)
    assert abs(same) < 0.05 and shifted > 10 * abs(same)


# ----------------------------------------------------------------------------------------------
# Precision / recall / density / coverage against the direct formulas


def _direct_prdc(real, fake, k_pr, k_dc):
    drr, dff, drf = cdist(real, real), cdist(fake, fake), cdist(real, fake)
    r_real_pr = np.sort(drr, 1)[:, k_pr]  # column 0 is the point itself
    r_fake_pr = np.sort(dff, 1)[:, k_pr]
    precision = np.mean([(drf[:, j] <= r_real_pr).any() for j in range(len(fake))])
    recall = np.mean([(drf[i, :] <= r_fake_pr).any() for i in range(len(real))])
    r_real_dc = np.sort(drr, 1)[:, k_dc]
    density = sum((drf[:, j] <= r_real_dc).sum() for j in range(len(fake))) / (k_dc * len(fake))
    coverage = np.mean([(drf[i, :] <= r_real_dc[i]).any() for i in range(len(real))])
    return precision, recall, density, coverage


def test_prdc_match_direct_formulas():
    real, fake = _gauss(120, 6, 14), _gauss(90, 6, 15, shift=0.5, scale=0.7)
    p, r = precision_recall(real, fake, k=3)
    d, c = density_coverage(real, fake, k=5)
    ep, er, ed, ec = _direct_prdc(real, fake, 3, 5)
    assert (p, r) == pytest.approx((ep, er))
    assert (d, c) == pytest.approx((ed, ec))


def test_prdc_of_identical_sets():
    x = _gauss(80, 5, 16)
    assert precision_recall(x, x) == (1.0, 1.0)
    d, c = density_coverage(x, x)
    assert c == 1.0 and d >= 1.0  # each point sits in its own ball and its k neighbours'


def test_all_metrics_reports_what_small_sets_cannot_support():
    out = all_metrics(_gauss(3, 4, 17), _gauss(3, 4, 18), kid_subsets=2)
    assert out["fid"] is not None and out["precision"] is None and out["density"] is None
    assert any("precision" in n for n in out["notes"])


# ----------------------------------------------------------------------------------------------
# Chunked exact nearest neighbours


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_knn_matches_brute_force_across_chunk_boundaries(metric):
    rng = np.random.default_rng(19)
    q, r = rng.random((130, 20)), rng.random((257, 20))
    d, i = knn(q, r, 6, metric=metric, chunk_query=32, chunk_ref=50)
    full = cdist(q, r, "euclidean" if metric == "l2" else "cosine")
    expect = np.argsort(full, 1, kind="stable")[:, :6]
    np.testing.assert_array_equal(i, expect)
    np.testing.assert_allclose(d, np.take_along_axis(full, expect, 1), atol=1e-12)


def test_knn_exclude_self_and_uint8_scaling():
    rng = np.random.default_rng(20)
    imgs = rng.integers(0, 256, (90, 12, 12), dtype=np.uint8)
    d, i = knn(imgs, imgs, 3, scale=1 / 255, exclude_self=True, chunk_query=16, chunk_ref=40)
    flat = imgs.reshape(90, -1) / 255.0
    full = cdist(flat, flat)
    np.fill_diagonal(full, np.inf)
    expect = np.argsort(full, 1, kind="stable")[:, :3]
    np.testing.assert_array_equal(i, expect)
    np.testing.assert_allclose(d, np.take_along_axis(full, expect, 1), atol=1e-12)
    assert (i != np.arange(90)[:, None]).all()


def test_knn_finds_near_duplicates_exactly():
    """Screening in float32 must not lose tiny distances: planted exact copies come back at 0."""
    rng = np.random.default_rng(21)
    ref = rng.integers(0, 256, (300, 64, 64), dtype=np.uint8)
    q = ref[[5, 77, 299]].copy()
    d, i = knn(q, ref, 2, scale=1 / 255)
    np.testing.assert_array_equal(i[:, 0], [5, 77, 299])
    assert (d[:, 0] == 0).all() and (d[:, 1] > 10).all()


def test_radius_counts_match_brute_force():
    rng = np.random.default_rng(22)
    q, r = rng.random((70, 5)), rng.random((110, 5))
    radii = rng.random(110) * 0.6
    counts = knn_radius_counts(q, r, radii, chunk_query=16, chunk_ref=30)
    np.testing.assert_array_equal(counts, (cdist(q, r) <= radii[None, :]).sum(1))


def test_knn_leaves_its_inputs_untouched():
    x = np.random.default_rng(23).random((40, 6)).astype(np.float32)
    before = x.copy()
    knn(x, x, 3, exclude_self=True, chunk_ref=16)
    knn(x, x, 3, metric="cosine", scale=2.0)
    np.testing.assert_array_equal(x, before)


def test_knn_errors_are_clear():
    with pytest.raises(ValueError, match="different sizes"):
        knn(np.zeros((3, 8, 8)), np.zeros((3, 9, 9)), 1)
    with pytest.raises(ValueError, match="cannot find 5"):
        knn(np.zeros((3, 4)), np.zeros((4, 4)), 5)
    with pytest.raises(ValueError, match="unknown metric"):
        knn(np.zeros((3, 4)), np.zeros((4, 4)), 1, metric="l1")
