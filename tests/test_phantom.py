"""The procedural echo phantom: determinism, geometry, dataset plan, quality grade, clips."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from scipy.stats import spearmanr

from echosynth.gen.data import phantom as P

SEED = 7


def _cell_items(size_per_cell: int = 1) -> list[P.PhantomItem]:
    """One item per (source, view) pair, including pairs outside the default mix."""
    items = []
    for si, source in enumerate(P.SOURCES):
        for vi, view in enumerate(P.VIEWS):
            for j in range(size_per_cell):
                items.append(P.make_item(1000 + 10 * (si * 4 + vi) + j, source, view, f"t{j}", SEED))
    return items


def _render_many(args: tuple[list[P.PhantomItem], int, int]) -> list[bytes]:
    items, seed, size = args
    return [P.render(it, seed, size).tobytes() for it in items]


# ----------------------------------------------------------------------------------------------
# Determinism


def test_plan_is_deterministic_and_seeded():
    assert P.plan(60, seed=3) == P.plan(60, seed=3)
    assert P.plan(60, seed=3) != P.plan(60, seed=4)
    assert [it.index for it in P.plan(60, seed=3)] == list(range(60))


def test_render_same_item_same_bytes_different_index_differs():
    item = P.plan(5, seed=SEED)[2]
    a, b = P.render(item, SEED, 48), P.render(item, SEED, 48)
    assert a.tobytes() == b.tobytes()
    other = dataclasses.replace(item, index=item.index + 1)
    assert P.render(other, SEED, 48).tobytes() != a.tobytes()
    assert P.render(item, SEED + 1, 48).tobytes() != a.tobytes()


def test_render_is_independent_of_worker_processes():
    items = P.plan(12, seed=SEED)
    here = _render_many((items, SEED, 40))
    with ProcessPoolExecutor(max_workers=2) as pool:
        # items split unevenly and in reverse order: output must not depend on who renders what
        parts = list(pool.map(_render_many, [(items[:5][::-1], SEED, 40), (items[5:], SEED, 40)]))
    assert parts[0][::-1] + parts[1] == here


# ----------------------------------------------------------------------------------------------
# Geometry and appearance


@pytest.mark.parametrize("size", [32, 112])
def test_every_view_and_source_renders_inside_a_black_bordered_cone(size):
    for item in _cell_items():
        img = P.render(item, SEED, size)
        assert img.shape == (size, size) and img.dtype == np.uint8, (item.source, item.view)
        cone = P.prepared_cone_mask(item, SEED, size)
        assert cone.sum() > 0.4 * size * size, "the cone should fill much of the square"
        assert not img[~cone].any(), f"{item.source}/{item.view}: pixels outside the cone must be black"
        # the top corners are outside any sector with the apex at the top centre
        k = size // 6
        assert not img[:k, :k].any() and not img[:k, -k:].any()
        assert img[cone].mean() > 15, f"{item.source}/{item.view}: cone is empty"


def test_views_differ_in_anatomy():
    # Same patient, same image index, same source: only the view changes, so the pictures must.
    imgs = {v: P.render(dataclasses.replace(P.make_item(5, "tmed2", v, "p1", SEED), quality=9.0), SEED, 64).astype(float)
            for v in P.VIEWS}
    for a in P.VIEWS:
        for b in P.VIEWS:
            if a < b:
                assert np.abs(imgs[a] - imgs[b]).mean() > 8, (a, b)


def test_end_diastole_has_larger_dark_pools_than_end_systole():
    diffs = []
    for item in P.plan(24, seed=SEED):
        cone = P.prepared_cone_mask(item, SEED, 64)
        dark = [(P.render(dataclasses.replace(item, quality=10.0, phase=ph), SEED, 64)[cone] < 40).mean()
                for ph in (0.0, 1.0)]
        diffs.append(dark[0] - dark[1])
    assert np.mean(np.array(diffs) > 0) > 0.9


def test_same_patient_images_are_related():
    # Two images of one patient differ less than images of two different patients (same view/source).
    def img(i, pid):
        return P.render(dataclasses.replace(P.make_item(i, "tmed2", "A4C", pid, SEED), quality=9.5, phase=0.0),
                        SEED, 48).astype(float)
    from scipy.ndimage import gaussian_filter
    same = np.abs(gaussian_filter(img(1, "p1"), 3) - gaussian_filter(img(2, "p1"), 3)).mean()
    other = np.mean([np.abs(gaussian_filter(img(1, "p1"), 3) - gaussian_filter(img(2, f"q{k}"), 3)).mean()
                     for k in range(6)])
    assert same < other


def test_render_raw_has_native_size_and_overlays():
    for source, st in P.SOURCES.items():
        item = P.make_item(40, source, st.views[0], "p9", SEED)
        raw = P.render_raw(item, SEED)
        assert raw.shape == (*st.raw_hw, 3) and raw.dtype == np.uint8
        colour = (raw.max(axis=2).astype(int) - raw.min(axis=2)) > 60
        if st.text_rgb is not None or st.ecg_rgb is not None:
            assert colour.sum() > 50, f"{source}: burnt-in text/ECG expected"
        else:
            assert colour.sum() == 0, f"{source}: exported without overlays"
        assert raw[0, 0].tolist() == [0, 0, 0]


def test_sample_grid_layout():
    g = P.sample_grid(seed=SEED, size=32, per_cell=2)
    assert g.dtype == np.uint8 and g.ndim == 2
    assert g.shape[1] > 2 * len(P.SOURCES) * 32 and g.shape[0] > len(P.VIEWS) * 32


def test_bad_items_give_clear_errors():
    item = P.plan(1, seed=SEED)[0]
    with pytest.raises(ValueError, match="unknown view"):
        P.render(dataclasses.replace(item, view="A5C"), SEED)
    with pytest.raises(ValueError, match="unknown source"):
        P.make_item(0, "echonet", "A4C", "p0")
    with pytest.raises(ValueError, match="quality"):
        P.render(dataclasses.replace(item, quality=11.0), SEED)


# ----------------------------------------------------------------------------------------------
# Dataset plan


@pytest.mark.parametrize("n", [11, 100, 1000, 31130])
def test_allocate_matches_mix_within_rounding(n):
    counts = P.allocate(n)
    total = sum(sum(v.values()) for v in P.DEFAULT_MIX.values())
    assert sum(counts.values()) == n
    cells = sum(len(v) for v in P.DEFAULT_MIX.values())  # 11 non-empty (source, view) cells
    assert len(counts) == cells == 11 and min(counts.values()) >= 1
    for (source, view), k in counts.items():
        quota = n * P.DEFAULT_MIX[source][view] / total
        assert abs(k - quota) < 1 + (1 if n < 30 else 0), (source, view, k, quota)


def test_allocate_full_size_reproduces_the_thesis_tables_and_custom_mix():
    total = sum(sum(v.values()) for v in P.DEFAULT_MIX.values())
    counts = P.allocate(total)
    assert all(counts[(s, v)] == c for s, views in P.DEFAULT_MIX.items() for v, c in views.items())
    assert P.allocate(10, {"tmed2": {"A2C": 1, "PSAX": 1}}) == {("tmed2", "A2C"): 5, ("tmed2", "PSAX"): 5}
    with pytest.raises(ValueError, match="unknown source"):
        P.allocate(10, {"echonet": {"A4C": 3}})
    with pytest.raises(ValueError, match="unknown view"):
        P.allocate(10, {"tmed2": {"A5C": 3}})


def test_plan_counts_equal_allocation():
    items = P.plan(500, seed=SEED)
    assert Counter((it.source, it.view) for it in items) == Counter(P.allocate(500))
    assert all(it.view in P.SOURCES[it.source].views for it in items)
    assert all(0.0 <= it.phase <= 1.0 and 0.0 <= it.quality <= 10.0 for it in items)
    video = [it for it in items if P.SOURCES[it.source].video]
    assert video and all(it.frame is not None for it in video)
    assert all(it.frame is None for it in items if not P.SOURCES[it.source].video)


def test_tmed2_patients_hold_several_images_at_most_15_per_view():
    items = [it for it in P.plan(4000, seed=SEED) if it.source == "tmed2"]
    per_view = Counter((it.patient_id, it.view) for it in items)
    per_patient = Counter(it.patient_id for it in items)
    assert max(per_view.values()) <= 15
    assert np.mean(list(per_patient.values())) >= 5  # several images per patient (thesis: ~13.8)
    views_per_patient = {p: {it.view for it in items if it.patient_id == p} for p in per_patient}
    assert np.mean([len(v) for v in views_per_patient.values()]) > 2
    # one video per patient in the video sources
    lvh = Counter(it.patient_id for it in P.plan(400, seed=SEED) if it.source == "lvh")
    assert max(lvh.values()) == 1


# ----------------------------------------------------------------------------------------------
# Quality grade


def test_grade_formula_is_monotone_and_bounded():
    assert P.grade({}) == 10.0
    assert math.isclose(P.grade({k: 1.0 for k in P.DEGRADATIONS}), 0.0, abs_tol=1e-12)
    for k in P.DEGRADATIONS:
        assert P.grade({k: 0.6}) < P.grade({k: 0.3}) < 10.0
    with pytest.raises(ValueError, match="unknown degradations"):
        P.grade({"blur": 0.5})


def test_item_quality_is_the_grade_of_the_applied_degradations():
    for item in P.plan(40, seed=SEED):
        assert math.isclose(P.grade(P.degradations(item, SEED)), item.quality, abs_tol=1e-9)
        for q in (0.0, 3.3, 10.0):
            d = P.degradations(dataclasses.replace(item, quality=q), SEED)
            assert math.isclose(P.grade(d), q, abs_tol=1e-9)
            assert all(0.0 <= v <= 1.0 for v in d.values())


def _contrast(img: np.ndarray, cone: np.ndarray) -> float:
    v = img[cone].astype(float)
    return float(np.percentile(v, 90) - np.percentile(v, 10))


def test_degraded_render_of_the_same_item_has_less_contrast():
    for item in P.plan(6, seed=SEED):
        cone = P.prepared_cone_mask(item, SEED, 64)
        c = [_contrast(P.render(dataclasses.replace(item, quality=q), SEED, 64), cone) for q in (10.0, 5.0, 1.0)]
        assert c[0] > c[1] > c[2], (item, c)


def test_quality_correlates_with_image_contrast_across_a_plan():
    items = P.plan(120, seed=SEED)
    q = [it.quality for it in items]
    c = [_contrast(P.render(it, SEED, 48), P.prepared_cone_mask(it, SEED, 48)) for it in items]
    assert spearmanr(q, c).statistic > 0.3
    assert np.std(q) > 0.7  # the grades actually spread


# ----------------------------------------------------------------------------------------------
# Clips


def test_clip_shape_motion_and_gray_without_doppler():
    item = P.make_item(3, "dynamic", "A4C", "p3", SEED)
    clip = P.render_clip(item, SEED, n_frames=6, doppler=False, raw=False, size=48)
    assert clip.shape == (6, 48, 48, 3) and clip.dtype == np.uint8
    assert (clip[..., 0] == clip[..., 2]).all(), "B-mode clips are gray"
    assert np.abs(clip[0].astype(int) - clip[2]).mean() > 2, "the heart moves"
    raw = P.render_clip(item, SEED, n_frames=2, raw=True)
    assert raw.shape == (2, *P.SOURCES["dynamic"].raw_hw, 3)


@pytest.mark.parametrize("view,source", [("A4C", "unity"), ("PLAX", "lvh"), ("PSAX", "tmed2"), ("A2C", "camus")])
def test_doppler_clips_contain_colour_inside_the_cone(view, source):
    item = P.make_item(11, source, view, "p5", SEED)
    clip = P.render_clip(item, SEED, n_frames=8, doppler=True, raw=False, size=64)
    chroma = clip.max(axis=3).astype(int) - clip.min(axis=3)
    coloured = chroma > 80
    assert coloured.sum() > 20, "colour-Doppler jets expected"
    assert not (coloured & ~P.prepared_cone_mask(item, SEED, 64)[None]).any()
    red = (clip[..., 0].astype(int) - clip[..., 2]) > 80
    blue = (clip[..., 2].astype(int) - clip[..., 0]) > 80
    assert red.any() or blue.any()
