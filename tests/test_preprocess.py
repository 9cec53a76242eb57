"""Unit tests of every preprocessing step, with known values and scipy as the reference."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage, stats

from echosynth.gen.data import preprocess as pp
from tests.importer_fixtures import echo_clip, echo_frame, sector_mask


def test_to_uint8_scales_and_keeps():
    u8 = np.array([[0, 7], [200, 255]], np.uint8)
    assert pp.to_uint8(u8) is u8
    u16 = np.array([[0, 1000], [500, 250]], np.uint16)
    assert pp.to_uint8(u16).tolist() == [[0, 255], [128, 64]]
    f = np.array([[0.0, 0.5], [1.0, np.nan]])
    assert pp.to_uint8(f).tolist() == [[0, 128], [255, 0]]
    small_ints = np.array([[3, 100]], np.int16)  # already in 0–255: absolute scale kept
    assert pp.to_uint8(small_ints).tolist() == [[3, 100]]
    assert pp.to_uint8(np.array([[True, False]])).tolist() == [[255, 0]]


def test_to_gray_matches_pil_luma():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(rgb).convert("L"))
    assert np.abs(pp.to_gray(rgb).astype(int) - ref).max() <= 1
    g = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    assert np.array_equal(pp.to_gray(g), g)
    assert np.array_equal(pp.to_gray(np.repeat(g[..., None], 3, 2)), g)  # gray RGB -> same gray
    rgba = np.concatenate([rgb, np.full((17, 23, 1), 9, np.uint8)], 2)
    assert np.array_equal(pp.to_gray(rgba), pp.to_gray(rgb))


def test_channel_max_diff_and_colour_fraction():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (10, 50, 20)  # |R-G| = 40 is the max
    rgb[0, 1] = (100, 100, 100)
    rgb[1, 2] = (0, 255, 250)
    d = pp.channel_max_diff(rgb)
    assert d.tolist() == [[40, 0, 0], [0, 0, 255]]
    assert pp.colour_fraction(rgb, tolerance=30) == pytest.approx(2 / 6)
    mask = np.zeros((2, 3), bool)
    mask[0, :2] = True
    assert pp.colour_fraction(rgb, mask, tolerance=30) == pytest.approx(0.5)
    assert pp.colour_fraction(rgb, mask, tolerance=40) == 0.0  # strictly above the tolerance
    assert not pp.is_colour(np.repeat(echo_frame()[..., None], 3, 2))
    assert pp.is_colour(rgb)


def test_colour_histogram_ks_equals_scipy_on_raw_samples():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    b = np.repeat(rng.integers(0, 256, (20, 30, 1), dtype=np.uint8), 3, 2)
    b[:5] = a[:5]
    ha, hb = pp.colour_histogram(a), pp.colour_histogram(b)
    assert ha.sum() == 600 and ha.shape == (256,)
    da, db = pp.channel_max_diff(a).ravel(), pp.channel_max_diff(b).ravel()
    ref = stats.ks_2samp(da, db, method="asymp")
    assert pp.ks_pvalue(ha, hb) == pytest.approx(ref.pvalue, rel=1e-9)
    # Close samples (p not ~0), unequal sizes, heavy ties: still scipy's number.
    rng = np.random.default_rng(5)
    x, y = rng.poisson(3, 900), rng.poisson(3.2, 700)
    ref = stats.ks_2samp(x, y, method="asymp").pvalue
    assert 1e-6 < ref < 0.9
    assert pp.ks_pvalue(np.bincount(x, minlength=256), np.bincount(y, minlength=256)) == pytest.approx(ref, rel=1e-9)


def _hist(sample: np.ndarray) -> np.ndarray:
    return np.bincount(sample, minlength=256)


def test_ks_groups_greedy_reference_rule():
    rng = np.random.default_rng(2)
    gray = [_hist(np.clip(rng.normal(2, 1, 3000), 0, 255).astype(int)) for _ in range(3)]
    doppler = [_hist(np.clip(rng.normal(80, 30, 3000), 0, 255).astype(int)) for _ in range(2)]
    order = [gray[0], doppler[0], gray[1], doppler[1], gray[2]]
    groups, refs = pp.ks_groups(order, alpha=0.05)
    assert groups == [0, 1, 0, 1, 0]
    assert refs == [0, 1]
    # Every member of a group is not rejected against its reference, and every sample was
    # rejected by all groups created before its own (checked with scipy directly).
    expand = lambda h: np.repeat(np.arange(256), h)  # noqa: E731
    for i, g in enumerate(groups):
        assert stats.ks_2samp(expand(order[refs[g]]), expand(order[i]), method="asymp").pvalue >= 0.05
        for earlier in range(g):
            assert stats.ks_2samp(expand(order[refs[earlier]]), expand(order[i]), method="asymp").pvalue < 0.05
    assert pp.ks_groups(order) == (groups, refs)  # deterministic
    # alpha = 0 never rejects: a single group.
    assert set(pp.ks_groups(order, alpha=0.0)[0]) == {0}


def test_detect_cone_finds_the_sector_not_the_overlays():
    clip = echo_clip(8, seed=3)
    gray = np.stack([pp.to_gray(f) for f in clip])
    mask = pp.detect_cone(gray)
    truth = sector_mask()
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.9
    assert not mask[1:5, 1:12].any()  # burnt-in text outside
    assert not mask[-3:].any()  # ECG trace outside
    # The dark cavity inside the sector is filled by the convex hull.
    assert mask[int(64 * 0.45), 40]
    assert pp.detect_cone(np.zeros((40, 40), np.uint8)) is None
    speck = np.zeros((40, 40), np.uint8)
    speck[3:6, 3:6] = 200
    assert pp.detect_cone(speck) is None  # too small to be a sector


def test_crop_center_crop_resize():
    img = np.arange(6 * 10, dtype=np.uint8).reshape(6, 10)
    mask = np.zeros((6, 10), bool)
    mask[1:5, 2:9] = True
    mask[1, 2] = False
    crop = pp.crop_to_cone(img, mask)
    assert crop.shape == (4, 7) and crop[0, 0] == 0 and crop[1, 1] == img[2, 3]
    assert pp.crop_to_cone(img, None) is img
    sq = pp.center_crop_square(img)
    assert sq.shape == (6, 6) and np.array_equal(sq, img[:, 2:8])
    assert pp.center_crop_square(img.T).shape == (6, 6)
    out = pp.resize(np.full((30, 30), 77, np.uint8), 16)
    assert out.shape == (16, 16) and out.dtype == np.uint8 and (out == 77).all()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 40), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(x).resize((16, 16), Image.BICUBIC))
    assert np.array_equal(pp.resize(x, 16), ref)
    fin = pp.finish(echo_frame(), 32, pp.detect_cone(echo_frame()))
    assert fin.shape == (32, 32) and fin.dtype == np.uint8


def test_resample_isotropic():
    img = np.zeros((10, 20), np.uint8)
    assert pp.resample_isotropic(img, (0.3, 0.6)).shape == (20, 20)
    assert pp.resample_isotropic(img, (0.5, 0.5)) is img


def test_select_frames_random_is_seeded_per_item():
    a = pp.select_frames(50, "random", 0, "video-a")
    assert a == pp.select_frames(50, "random", 0, "video-a") and len(a) == 1 and 0 <= a[0] < 50
    draws = {pp.select_frames(50, "random", s, "video-a")[0] for s in range(20)}
    assert len(draws) > 5  # the seed matters
    keys = {pp.select_frames(50, "random", 0, f"video-{k}")[0] for k in range(20)}
    assert len(keys) > 5  # and so does the item
    assert pp.select_frames(7, "all", 0, "v") == list(range(7))
    assert pp.select_frames(0, "random", 0, "v") == []
    with pytest.raises(ValueError, match="unknown frame selection"):
        pp.select_frames(5, "best", 0, "v")


def test_mse_matrix_and_dissimilar_frames():
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 256, (6, 8, 8)).astype(np.uint8)
    d = pp.mse_matrix(frames)
    brute = np.array([[np.mean((frames[i].astype(float) - frames[j]) ** 2) for j in range(6)] for i in range(6)])
    assert np.allclose(d, brute)
    # Eight near-identical frames and two outliers: the outliers are the dissimilar ones.
    base = np.full((10, 8, 8), 100, np.uint8)
    base[3] = 250
    base[7] = 0
    assert pp.dissimilar_frames(base, 0.2) == [3, 7]
    sel = pp.dissimilar_frames(frames, 0.25)
    sim = -d.sum(1) / 5
    assert sel == np.flatnonzero(sim <= np.quantile(sim, 0.25)).tolist()
    assert pp.dissimilar_frames(frames[:1]) == [0]


def test_cap_per_group_keeps_limit_independent_of_order():
    keys = [f"k{i}" for i in range(10)]
    groups = ["p1"] * 7 + ["p2"] * 3
    keep = pp.cap_per_group(keys, groups, 4, seed=0)
    assert sum(keep[:7]) == 4 and all(keep[7:])
    chosen = {k for k, f in zip(keys, keep) if f}
    rev = pp.cap_per_group(keys[::-1], groups[::-1], 4, seed=0)
    assert {k for k, f in zip(keys[::-1], rev) if f} == chosen


def test_cone_and_doppler_on_a_raw_phantom_frame():
    """The phantom's acquired-looking frames (overlays, ECG, colour text) against the detectors."""
    phantom = pytest.importorskip("echosynth.gen.data.phantom")
    if not hasattr(phantom, "render_clip"):
        pytest.skip("the phantom has no video mode yet")
    item = next(it for it in phantom.plan(40, seed=0) if it.source == "unity")
    clip = phantom.render_clip(item, 0, n_frames=2, doppler=False)
    gray = np.stack([pp.to_gray(f) for f in clip])
    mask = pp.detect_cone(gray)
    assert mask is not None and 0.2 < mask.mean() < 0.8
    h, w = mask.shape
    assert not mask[: h // 20, : w // 5].any()  # the burnt-in text block (top left)
    assert not mask[-h // 20:].any()  # the ECG strip at the bottom
    # Coloured text and ECG sit outside the cone: inside, a gray acquisition has ~no colour.
    assert pp.colour_fraction(clip[0], mask) < 0.005 < pp.colour_fraction(clip[0], ~mask)
    doppler = phantom.render_clip(item, 0, n_frames=2, doppler=True)
    assert pp.is_doppler(doppler, threshold=0.002)  # the clip: jets come and go
    assert not pp.is_doppler(doppler, threshold=0.0)  # 0 disables the detector
    assert not pp.is_doppler(clip, threshold=0.002)
    assert pp.flow_evidence(clip).fraction == 0.0  # yellow text, green ECG, warm grey map: no flow
    assert pp.clip_colour_fraction(doppler, mask) >= pp.colour_fraction(doppler[1], mask)


def test_ks_groups_fast_form_equals_pairwise_scipy_tests():
    rng = np.random.default_rng(6)
    hists = [_hist(np.clip(rng.normal(rng.uniform(0, 12), 3, rng.integers(300, 900)), 0, 255).astype(int))
             for _ in range(40)]
    expand = lambda h: np.repeat(np.arange(256), h)  # noqa: E731
    groups, refs = [], []
    for i, h in enumerate(hists):  # the rule written out with scipy's own test
        for g, r in enumerate(refs):
            if stats.ks_2samp(expand(hists[r]), expand(h), method="asymp").pvalue >= 0.05:
                groups.append(g)
                break
        else:
            refs.append(i)
            groups.append(len(refs) - 1)
    assert pp.ks_groups(hists, alpha=0.05) == (groups, refs)
    assert 3 <= len(refs) < 40  # a real mix of joins and new groups


def test_block_mean_matches_a_loop():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (10, 13, 3)).astype(np.uint8)
    out = pp.block_mean(a, side=5)  # f = ceil(13 / 5) = 3: blocks of 3×3, ragged edge dropped
    assert out.shape == (3, 4, 3)
    want = np.array([[[a[3 * i:3 * i + 3, 3 * j:3 * j + 3, c].astype(np.float64).mean() for c in range(3)]
                      for j in range(4)] for i in range(3)])
    np.testing.assert_allclose(out, want, rtol=1e-6)
    assert np.array_equal(pp.block_mean(a, side=64), a.astype(np.float32))


def test_span_fill_restores_a_sector_with_a_cavity():
    cone = sector_mask(64, 80)
    holey = cone.copy()
    holey[25:35, 30:50] = False  # a dark cavity
    a = pp._span_fill(holey)
    assert np.array_equal(a, cone)  # the cavity filled, nothing added
    assert not (a & ~pp._convex_fill(holey)).any()  # inside the hull (which also spans the arc's chords)


def test_imaging_region_holds_both_sectors_of_a_split_screen():
    g = np.zeros((64, 170), np.float32)
    g[:, :80][sector_mask(64, 80)] = 120
    g[:, 90:][sector_mask(64, 80)] = 120
    g[2:5, 2:20] = 230  # text: too small to count
    r = pp.imaging_region(g)
    assert r[:, :80].sum() > 0.9 * sector_mask(64, 80).sum() and r[:, 90:].sum() > 0.9 * sector_mask(64, 80).sum()
    assert not r[2:5, 2:20].any()
    assert pp.imaging_region(np.zeros((20, 20), np.float32)).all()  # nothing found: the whole frame


def test_tint_free_chroma_removes_a_multiplicative_tint_and_keeps_flow():
    rng = np.random.default_rng(1)
    y = rng.uniform(30, 200, (40, 40)).astype(np.float32)
    tint = np.array([1.0, 0.8, 0.6], np.float32)
    rgb = y[..., None] * tint  # every pixel: chroma = k·Y with one k
    region = np.ones(y.shape, bool)
    cb, cr = pp.tint_free_chroma(rgb, region)
    assert np.abs(cb).max() < 0.5 and np.abs(cr).max() < 0.5
    rgb[10:16, 10:16] = (200, 20, 20)  # a red jet: 2% of the region
    cb, cr = pp.tint_free_chroma(rgb, region)
    lum = rgb.astype(np.float64) @ [0.299, 0.587, 0.114]
    lum_m = ndimage.median_filter(lum, size=3)
    kb = np.median(ndimage.median_filter(rgb[..., 2] - lum, size=3) / lum_m)  # B−Y's tint (the jet is 2%)
    jet = 0.299 * 200 + 0.587 * 20 + 0.114 * 20
    assert cb[12, 12] == pytest.approx((20 - jet) - kb * jet, abs=0.01)  # inside the jet: no filter change
    assert np.hypot(cb[12, 12], cr[12, 12]) > pp.FLOW_CHROMA
    hue = np.degrees(np.arctan2(cr[12, 12], cb[12, 12]))
    assert pp.FLOW_HUES[0][0] <= hue <= pp.FLOW_HUES[0][1]  # red lies in the red/yellow window
