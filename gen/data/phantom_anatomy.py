"""Cardiac anatomy for the phantom: each view's chambers, walls, valves and pericardium as echogenicity.

Each view is drawn in a *template frame* (centimetres, transducer at the origin, y = depth) from
soft shapes: approximate signed distances of eggs/ellipses and line segments, turned into
0–1 masks by a linear ramp of width `eps` (partial-volume blur). A `Heart` (per patient, plus
a little per image) scales, rotates and moves the template, and the cardiac phase shrinks the
ventricles, thickens their walls, swells the atria and opens or closes the valves.

Echogenicity levels (relative backscatter power) are chosen so that after speckle and log
compression the blood is near black, the myocardium bright grey, valves brighter and the
pericardium the brightest band, as in B-mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Relative backscatter power of each tissue (1.0 ≈ white after compression).
BLOOD = 0.00025
BACKGROUND = 0.0022  # soft tissue / lung around the heart
MYOCARDIUM = 0.028
THIN_WALL = 0.006  # atrial and vessel walls
VALVE = 0.06
FIBROUS = 0.2  # crux, annulus
PERICARDIUM = 0.35


@dataclass(frozen=True)
class Heart:
    """Anatomy of one patient in one image: multiplicative sizes (1 = template) and the pose."""

    scale: float = 1.0
    rot_deg: float = 0.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    lv_width: float = 1.0
    lv_length: float = 1.0
    wall_cm: float = 1.0
    rv_size: float = 1.0
    atria_size: float = 1.0
    aorta_size: float = 1.0
    contraction: float = 0.55  # how far the ventricles shrink from end-diastole to end-systole
    foreshorten: float = 0.0  # off-axis cut: apex pulled in and rounded (0–1)


@dataclass(frozen=True)
class Valves:
    """Valve and flow state of one frame: openness 0 (closed) – 1 (open), flow speeds 0–1."""

    mitral: float = 0.0
    aortic: float = 0.0
    inflow: float = 0.0
    outflow: float = 0.0


@dataclass(frozen=True)
class Jet:
    """A blood-flow jet in template coordinates: blood runs from p0 to p1 (Gaussian cross-section)."""

    p0: tuple[float, float]
    p1: tuple[float, float]
    width: float
    speed: float


@dataclass
class Parts:
    """Soft-shape ingredients of one view before composition (signed distances in cm)."""

    cavities: list[np.ndarray] = field(default_factory=list)
    walls: list[tuple[np.ndarray, float]] = field(default_factory=list)  # ventricular myocardium
    thin_walls: list[tuple[np.ndarray, float]] = field(default_factory=list)
    bright: list[tuple[np.ndarray, float, float]] = field(default_factory=list)  # (distance, half width, level)
    outline: np.ndarray | None = None  # signed distance to the heart's outer wall, for the pericardium
    wall_gain: np.ndarray | None = None  # per-sample brightness of the myocardium (dropout)
    jets: list[Jet] = field(default_factory=list)


# Template centre (cm) and base rotation (degrees, + turns +x towards depth) of each view.
TEMPLATES: dict[str, tuple[float, float, float]] = {
    "A4C": (-0.4, 8.2, 0.0),
    "A2C": (0.2, 8.2, 0.0),
    "PLAX": (1.2, 7.4, -12.0),
    "PSAX": (0.3, 8.2, 0.0),
}
# Where each template's centre lands in the image plane (cm): PLAX sits left so the aortic root
# and left atrium stay inside the sector while the apex runs off the left edge.
PLACEMENT: dict[str, tuple[float, float]] = {"A4C": (-0.4, 8.2), "A2C": (0.2, 8.2), "PLAX": (0.0, 7.6), "PSAX": (0.3, 8.2)}


# ----------------------------------------------------------------------------------------------
# Soft shapes


def egg_sd(u: np.ndarray, v: np.ndarray, cx: float, cy: float, a_perp: float, a_long: float,
           axis_deg: float = 0.0, egg: float = 0.0) -> np.ndarray:
    """Approximate signed distance to an egg: an ellipse whose width grows by `egg` towards +long.

    axis_deg is the direction of the long axis measured from +v (depth) towards +u. First-order
    distance (k − 1)/|∇k| with k = √f (exact for circles) keeps wall bands even around elongated chambers.
    """
    du, dv = u - np.float32(cx), v - np.float32(cy)
    if axis_deg:
        s, c = math.sin(math.radians(axis_deg)), math.cos(math.radians(axis_deg))
        lo, pe = du * s + dv * c, du * c - dv * s
    else:
        lo, pe = dv, du
    if egg:
        pe = pe / np.maximum(1.0 + np.float32(egg / a_long) * lo, 0.35)
    ia, ib = np.float32(1.0 / a_perp), np.float32(1.0 / a_long)
    pa, lb = pe * ia, lo * ib
    k = np.sqrt(pa * pa + lb * lb)
    g = np.sqrt((pa * ia) ** 2 + (lb * ib) ** 2)
    return (k - 1.0) * k / (g + np.float32(1e-3))


def segment_dist(u: np.ndarray, v: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]) -> np.ndarray:
    """Distance to the line segment p0–p1."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    l2 = max(dx * dx + dy * dy, 1e-6)
    du, dv = u - np.float32(p0[0]), v - np.float32(p0[1])
    t = np.clip((du * np.float32(dx) + dv * np.float32(dy)) * np.float32(1.0 / l2), 0.0, 1.0)
    ex, ey = du - t * np.float32(dx), dv - t * np.float32(dy)
    return np.sqrt(ex * ex + ey * ey)


def ramp(sd: np.ndarray, eps: float) -> np.ndarray:
    """Soft inside mask of a signed distance: 1 inside, 0 outside, linear over `eps` cm."""
    return np.clip(np.float32(0.5) - sd * np.float32(1.0 / eps), 0.0, 1.0)


def _lerp(a: tuple[float, float], b: tuple[float, float], t: float) -> tuple[float, float]:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


def _egg_half_width(a_perp: float, a_long: float, egg: float, offset: float) -> float:
    """Half-width of an egg at long-axis `offset` from its centre (0 beyond the tips)."""
    q = 1.0 - (offset / a_long) ** 2
    return a_perp * math.sqrt(max(q, 0.0)) * max(1.0 + egg * offset / a_long, 0.35)


# ----------------------------------------------------------------------------------------------
# Views (template frame; k = contraction × phase: 0 at end-diastole)


def _apical(u: np.ndarray, v: np.ndarray, h: Heart, k: float, vs: Valves, four: bool) -> Parts:
    """A4C (four chambers, apex up, LV on the right) or A2C (LV and LA only)."""
    p = Parts()
    apex_y = 1.9 + 2.0 * h.foreshorten
    lv_hw = 2.25 * h.lv_width * (1 - 0.6 * k)
    mv_y = apex_y + 7.8 * h.lv_length * (1 - 0.22 * k) * (1 - 0.25 * h.foreshorten)
    wall = h.wall_cm * (1 + 0.9 * k)
    cx = 0.5 if four else 0.1
    a_long = (mv_y + 0.6 - apex_y) / 2
    cy = apex_y + a_long
    tilt = 5.0 if four else 0.0
    sd_lv = egg_sd(u, v, cx, cy, lv_hw, a_long, -tilt, egg=0.35)
    cav_lv = np.maximum(sd_lv, v - np.float32(mv_y))
    # Mitral annulus: the egg's width at the valve plane.
    hw_mv = _egg_half_width(lv_hw, a_long, 0.35, mv_y - cy) * 0.92
    la_ax, la_ay = 1.6 * h.atria_size * (1 + 0.25 * k), 1.75 * h.atria_size * (1 + 0.2 * k)
    la_cx, la_cy = cx + 0.35, mv_y - 0.45 + la_ay
    sd_la = egg_sd(u, v, la_cx, la_cy, la_ax, la_ay)
    cav_la = np.maximum(sd_la, np.float32(mv_y - 0.05) - v)
    p.cavities += [cav_lv, cav_la]
    p.walls.append((cav_lv, wall))
    p.thin_walls.append((sd_la, 0.32))
    outline = [cav_lv - np.float32(wall)]
    # Mitral leaflets hinge on the annulus; closed they meet just on the ventricular side.
    hs, hl = (cx - hw_mv, mv_y), (cx + hw_mv, mv_y)
    mid = (cx + 0.1, mv_y - 0.35)
    span = 2 * hw_mv
    tip_a = _lerp(mid, (hs[0] + 0.35, mv_y - 0.62 * span), vs.mitral)
    tip_p = _lerp((mid[0] + 0.05, mid[1]), (hl[0] - 0.3, mv_y - 0.45 * span), vs.mitral)
    p.bright += [(segment_dist(u, v, hs, tip_a), 0.08, VALVE), (segment_dist(u, v, hl, tip_p), 0.07, VALVE)]
    p.bright.append((np.hypot(u - np.float32(hl[0] + 0.15), v - np.float32(mv_y + 0.05)), 0.35, FIBROUS))
    mv_c = (cx, mv_y + 0.4)
    p.jets += [Jet(mv_c, (cx - 0.2, apex_y + 1.6), 0.55, 0.9 * vs.inflow),
               Jet((cx - 0.45 * lv_hw, apex_y + 2.0), (cx - 0.55 * lv_hw, mv_y - 0.2), 0.5, 0.75 * vs.outflow),
               Jet((la_cx, la_cy + 0.8 * la_ay), (la_cx, mv_y + 0.5), 0.5, 0.35 * (1 - vs.mitral * 0.5))]
    if four:
        rv_hw = 1.1 * h.rv_size * (1 - 0.45 * k)
        rv_apex = apex_y + 2.2
        tv_y = mv_y - 0.35
        rv_long = (tv_y + 0.6 - rv_apex) / 2
        rv_cx = cx - lv_hw - wall - 0.95 * rv_hw
        sd_rv = egg_sd(u, v, rv_cx, rv_apex + rv_long, rv_hw, rv_long, 10.0, egg=0.5)
        # The RV keeps out of the LV wall: that gap is the interventricular septum.
        cav_rv = np.maximum(np.maximum(sd_rv, v - np.float32(tv_y)), np.float32(wall * 0.95) - sd_lv)
        ra_ax, ra_ay = 1.4 * h.atria_size * (1 + 0.25 * k), 1.65 * h.atria_size * (1 + 0.2 * k)
        ra_cx, ra_cy = rv_cx + 0.1, tv_y - 0.45 + ra_ay
        sd_ra = egg_sd(u, v, ra_cx, ra_cy, ra_ax, ra_ay)
        cav_ra = np.maximum(np.maximum(sd_ra, np.float32(0.45) - sd_la), np.float32(tv_y - 0.05) - v)
        p.cavities += [cav_rv, cav_ra]
        p.walls.append((cav_rv, 0.45))
        p.thin_walls.append((sd_ra, 0.3))
        outline += [cav_rv - np.float32(0.45)]
        hw_tv = rv_hw * 0.75
        ts, tl = (rv_cx + hw_tv, tv_y), (rv_cx - hw_tv, tv_y)
        tmid = (rv_cx, tv_y - 0.3)
        tip_s = _lerp(tmid, (ts[0] - 0.25, tv_y - 1.1 * hw_tv), vs.mitral)
        tip_l = _lerp(tmid, (tl[0] + 0.3, tv_y - 1.3 * hw_tv), vs.mitral)
        p.bright += [(segment_dist(u, v, ts, tip_s), 0.10, VALVE), (segment_dist(u, v, tl, tip_l), 0.10, VALVE)]
        # The crux: fibrous body where the septa meet the valve planes, bright in every A4C.
        crux = (cx - lv_hw - 0.5 * wall, mv_y + 0.05)
        p.bright.append((np.hypot(u - np.float32(crux[0]), v - np.float32(crux[1])), 0.45, FIBROUS))
        p.jets.append(Jet((rv_cx, tv_y + 0.4), (rv_cx + 0.2, rv_apex + 1.2), 0.5, 0.6 * vs.inflow))
    else:
        # Left atrial appendage: a small pouch at the top right of the LA.
        sd_laa = egg_sd(u, v, la_cx + la_ax * 0.95, mv_y + 0.5, 0.35, 0.75, -35.0)
        cav_laa = np.maximum(sd_laa, np.float32(0.3) - np.maximum(cav_lv, -sd_lv))
        p.cavities.append(cav_laa)
        p.bright.append((np.hypot(u - np.float32(hs[0] - 0.15), v - np.float32(mv_y + 0.05)), 0.3, FIBROUS))
    p.outline = np.minimum.reduce(outline)
    # The lateral wall runs along the beams far off-centre: it returns little echo (dropout).
    # The septum, thick and crossed by many beams, is the brightest wall.
    rel = (u - np.float32(cx)) * np.float32(1.0 / (lv_hw + wall))
    lat = np.clip(rel - np.float32(0.3), 0.0, 1.0)
    sep = np.clip(np.float32(-0.4) - rel, 0.0, 0.6) * np.clip(np.float32(mv_y + 1.0) - v, 0.0, 1.0)
    p.wall_gain = np.float32(1.0) - np.float32(0.6) * lat + np.float32(2.0) * sep
    return p


def _plax(u: np.ndarray, v: np.ndarray, h: Heart, k: float, vs: Valves) -> Parts:
    """Parasternal long axis: RVOT on top, septum, long-axis LV (apex off left), aortic root, LA."""
    p = Parts()
    top = 5.4  # LV cavity top edge (septum's LV face) at end-diastole
    wall = h.wall_cm * (1 + 0.9 * k)
    lv_ap = 1.9 * h.lv_width * (1 - 0.6 * k)
    lv_al = 5.2 * h.lv_length * (1 - 0.12 * k)
    lv_c = (3.6 - lv_al, top + lv_ap)
    sd_lv = egg_sd(u, v, lv_c[0], lv_c[1], lv_ap, lv_al, 90.0, egg=0.4)
    ao_r = 1.05 * h.aorta_size
    ao_c = (3.7, top + 0.95 - 0.1 * k)
    sd_ao = egg_sd(u, v, ao_c[0], ao_c[1], ao_r, 2.6, 90.0)
    cav_ao = np.maximum(sd_ao, np.float32(1.2) - u)
    la_ap, la_al = 1.5 * h.atria_size * (1 + 0.25 * k), 2.0 * h.atria_size * (1 + 0.15 * k)
    la_c = (3.9, ao_c[1] + ao_r + 0.4 + la_ap)
    sd_la = egg_sd(u, v, la_c[0], la_c[1], la_ap, la_al, 90.0)
    cav_la = np.maximum(sd_la, np.float32(0.4) - sd_ao)
    rv_ap = 1.1 * h.rv_size * (1 - 0.3 * k)
    rv_c = (0.6, top - wall - rv_ap)
    sd_rv = egg_sd(u, v, rv_c[0], rv_c[1], rv_ap, 4.8, 90.0)
    cav_rv = np.maximum(np.maximum(sd_rv, np.float32(wall) - sd_lv), np.float32(0.35) - sd_ao)
    da_c = (2.2, la_c[1] + la_ap + 1.2)
    sd_da = np.hypot(u - np.float32(da_c[0]), v - np.float32(da_c[1])) - np.float32(0.7)
    p.cavities += [sd_lv, cav_ao, cav_la, cav_rv, sd_da]
    p.walls += [(sd_lv, wall), (cav_rv, 0.4)]
    p.thin_walls += [(sd_ao, 0.3), (sd_la, 0.3), (sd_da, 0.22)]
    p.outline = np.minimum.reduce([sd_lv - np.float32(wall), sd_la - np.float32(0.3), cav_rv - np.float32(0.4)])
    # Mitral valve: anterior leaflet hangs from the posterior aortic wall, posterior from the annulus.
    ha = (ao_c[0] - 1.5, ao_c[1] + ao_r + 0.15)
    hp = (la_c[0] - la_al + 0.8, la_c[1] + 0.6 * la_ap)
    closed = (ha[0] - 0.6, (ha[1] + hp[1]) / 2 + 0.2)
    tip_a = _lerp(closed, (ha[0] - 1.9, ha[1] - 0.9), vs.mitral)
    tip_p = _lerp((closed[0] + 0.05, closed[1] + 0.05), (hp[0] - 1.0, hp[1] + 0.3), vs.mitral)
    p.bright += [(segment_dist(u, v, ha, tip_a), 0.11, VALVE), (segment_dist(u, v, hp, tip_p), 0.10, VALVE)]
    # Aortic cusps: meet in the middle of the root when closed, lie along the walls when open.
    base_x = 1.9
    up, lo = (base_x, ao_c[1] - ao_r + 0.1), (base_x, ao_c[1] + ao_r - 0.1)
    c_mid = (base_x + 0.9, ao_c[1])
    p.bright += [(segment_dist(u, v, up, _lerp(c_mid, (base_x + 1.4, up[1] - 0.05), vs.aortic)), 0.08, VALVE),
                 (segment_dist(u, v, lo, _lerp(c_mid, (base_x + 1.4, lo[1] + 0.05), vs.aortic)), 0.08, VALVE)]
    p.bright.append((np.hypot(u - np.float32(hp[0] + 0.2), v - np.float32(hp[1] + 0.15)), 0.3, FIBROUS))
    p.jets += [Jet((ao_c[0] - 2.4, ao_c[1] + 0.3), (ao_c[0] + 1.5, ao_c[1]), 0.55, 0.9 * vs.outflow),
               Jet((la_c[0] - 0.5, la_c[1]), (ha[0] - 2.2, ha[1] + 0.6), 0.6, 0.8 * vs.inflow)]
    return p


def _psax(u: np.ndarray, v: np.ndarray, h: Heart, k: float, vs: Valves) -> Parts:
    """Parasternal short axis at papillary level: round LV ring, RV crescent over its front left."""
    p = Parts()
    r = 2.4 * h.lv_width * (1 - 0.6 * k)
    wall = h.wall_cm * (1 + 0.9 * k)
    c = (0.5, 8.4)
    sd_lv = egg_sd(u, v, c[0], c[1], r * 1.04, r, 0.0)
    pap = []
    for ang in (130.0, 45.0):  # posteromedial (lower left) and anterolateral (lower right) muscles
        a = math.radians(ang)
        pc = (c[0] + 0.86 * r * math.cos(a), c[1] + 0.86 * r * math.sin(a))
        pap.append(np.hypot(u - np.float32(pc[0]), v - np.float32(pc[1])) - np.float32(0.33 * (1 + 0.6 * k)))
    pap_sd = np.minimum(pap[0], pap[1])
    cav_lv = np.maximum(sd_lv, -pap_sd)
    rv_ap = 1.45 * h.rv_size * (1 - 0.4 * k)
    rv_c = (c[0] - 1.1, c[1] - r - wall - 0.25 * rv_ap)
    sd_rv = egg_sd(u, v, rv_c[0], rv_c[1], rv_ap, 3.4 * h.rv_size, 115.0)
    cav_rv = np.maximum(sd_rv, np.float32(wall) - sd_lv)
    p.cavities += [cav_lv, cav_rv]
    p.walls += [(sd_lv, wall), (cav_rv, 0.4)]
    p.bright.append((pap_sd, 0.0, MYOCARDIUM * 1.3))
    p.outline = np.minimum(sd_lv - np.float32(wall), cav_rv - np.float32(0.4))
    s = vs.inflow + vs.outflow
    p.jets += [Jet((c[0] - 0.6 * r, c[1] + 0.6 * r), (c[0] - 0.6 * r, c[1] - 0.6 * r), 0.6, 0.6 * s),
               Jet((c[0] + 0.6 * r, c[1] - 0.6 * r), (c[0] + 0.6 * r, c[1] + 0.6 * r), 0.6, 0.6 * s),
               Jet((rv_c[0] - 1.8, rv_c[1] + 0.6), (rv_c[0] + 1.5, rv_c[1] - 0.3), 0.5, 0.5 * s)]
    return p


def build_parts(view: str, u: np.ndarray, v: np.ndarray, heart: Heart, phase: float, valves: Valves) -> Parts:
    """The soft shapes of `view` at cardiac phase 0 (end-diastole) … 1 (end-systole)."""
    k = heart.contraction * phase
    if view in ("A4C", "A2C"):
        return _apical(u, v, heart, k, valves, four=view == "A4C")
    if view == "PLAX":
        return _plax(u, v, heart, k, valves)
    if view == "PSAX":
        return _psax(u, v, heart, k, valves)
    raise ValueError(f"unknown view {view!r}; expected one of {tuple(TEMPLATES)}")


# ----------------------------------------------------------------------------------------------
# Pose and composition


def to_template(view: str, x: np.ndarray, y: np.ndarray, heart: Heart) -> tuple[np.ndarray, np.ndarray, float]:
    """Physical plane coordinates (cm) → template coordinates of `view`; also the total rotation (rad)."""
    cx, cy, base = TEMPLATES[view]
    px, py = PLACEMENT[view]
    rot = math.radians(base + heart.rot_deg)
    c, s = math.cos(rot), math.sin(rot)
    dx, dy = x - np.float32(px + heart.shift_x), y - np.float32(py + heart.shift_y)
    inv = 1.0 / heart.scale
    u = (dx * np.float32(c) + dy * np.float32(s)) * np.float32(inv) + np.float32(cx)
    v = (dy * np.float32(c) - dx * np.float32(s)) * np.float32(inv) + np.float32(cy)
    return u, v, rot


def compose(parts: Parts, eps: float, background: np.ndarray, myo_texture: np.ndarray,
            peri_texture: np.ndarray, wall_dropout: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Echogenicity map and soft blood mask from a view's parts.

    Order matters: walls over background, blood over walls, valves over blood, and the
    pericardium as an extra bright band outside the heart's outer wall.
    """
    refl = background.copy()
    if parts.thin_walls:
        thin = ramp(np.minimum.reduce([sd - np.float32(t) for sd, t in parts.thin_walls]), eps)
        refl += (np.float32(THIN_WALL) * myo_texture - refl) * thin
    myo = ramp(np.minimum.reduce([sd - np.float32(t) for sd, t in parts.walls]), eps)
    gain = myo_texture
    for g in (wall_dropout, parts.wall_gain):
        if g is not None:
            gain = gain * g
    refl += (np.float32(MYOCARDIUM) * gain - refl) * myo
    blood = ramp(np.minimum.reduce(parts.cavities), eps)
    refl += (np.float32(BLOOD) - refl) * blood
    for dist, half, level in parts.bright:
        m = ramp(dist - np.float32(half), eps)
        refl += (np.float32(level) * myo_texture - refl) * m
    if parts.outline is not None:
        band = ramp(np.abs(parts.outline - np.float32(0.3)) - np.float32(0.12), eps)
        refl += np.float32(PERICARDIUM) * peri_texture * band * (1 - blood)
    return refl, blood


def beam_velocity(jets: list[Jet], u: np.ndarray, v: np.ndarray, x: np.ndarray, y: np.ndarray,
                  rot: float) -> np.ndarray:
    """Flow velocity along the beam (positive = towards the transducer) from a view's jets.

    Colour Doppler only sees the component along the scan line, so the same jet shows red or
    blue depending on whether it runs towards or away from the transducer.
    """
    vel = np.zeros_like(u)
    rho = np.sqrt(x * x + y * y) + np.float32(1e-3)
    bx, by = x / rho, y / rho  # beam direction (away from transducer)
    c, s = math.cos(rot), math.sin(rot)
    for j in jets:
        if j.speed < 1e-3:
            continue
        dx, dy = j.p1[0] - j.p0[0], j.p1[1] - j.p0[1]
        length = math.hypot(dx, dy) or 1e-3
        ex, ey = dx / length, dy / length
        du, dv = u - np.float32(j.p0[0]), v - np.float32(j.p0[1])
        along = (du * np.float32(ex) + dv * np.float32(ey)) * np.float32(1.0 / length)
        perp = du * np.float32(-ey) + dv * np.float32(ex)
        prof = np.exp(-(perp * perp) * np.float32(0.5 / j.width**2)) * np.clip(along * (1 - along) * 4.0, 0, 1)
        px, py = ex * c - ey * s, ex * s + ey * c  # jet direction in the physical frame
        vel -= np.float32(j.speed) * prof * (bx * np.float32(px) + by * np.float32(py))
    return vel
