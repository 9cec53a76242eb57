"""Figures for the evaluation stage (matplotlib, Agg), each written atomically as PNG."""

from __future__ import annotations

import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from echosynth.gen.core.io import save_png, write_bytes  # noqa: E402
from echosynth.gen.data.manifest import sort_views  # noqa: E402


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Render a figure to PNG bytes and write them atomically, then close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def line_plot(path, series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, title: str,
              floor: dict[str, float] | None = None, logx: bool = False) -> None:
    """One line per series (x, y), optional dashed horizontal floors per series."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, pts) in enumerate(series.items()):
        if not pts:
            continue
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", color=f"C{i}", label=name)
        if floor and floor.get(name) is not None:
            ax.axhline(floor[name], color=f"C{i}", ls="--", lw=1, label=f"{name} real-vs-real floor")
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def distance_histogram(path, synthetic: np.ndarray, holdout: np.ndarray, tau: float | None, xlabel: str,
                       title: str) -> None:
    """Overlaid density histograms of synthetic→train and held-out→train distances, with the threshold."""
    fig, ax = plt.subplots(figsize=(6, 4))
    both = np.concatenate([synthetic, holdout]) if len(holdout) else synthetic
    bins = np.linspace(float(both.min()), float(both.max()) + 1e-12, 41) if len(both) else 10
    ax.hist(holdout, bins=bins, density=True, alpha=0.5, label=f"held-out → train (n={len(holdout)})")
    ax.hist(synthetic, bins=bins, density=True, alpha=0.5, label=f"synthetic → train (n={len(synthetic)})")
    if tau is not None:
        ax.axvline(tau, color="k", ls="--", label=f"τ = {tau:.4g}")
    ax.set(xlabel=xlabel, ylabel="density", title=title)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def pair_grid(path, left: np.ndarray, right: np.ndarray, captions: list[str], title: str,
              left_name: str = "synthetic", right_name: str = "nearest train", ncol: int = 4) -> None:
    """Pairs of uint8 images side by side (left | right) with a caption under each pair, as one PNG (PIL: fast)."""
    from PIL import Image, ImageDraw

    n = len(left)
    size = left.shape[-1] if n else 32
    zoom = max(1, -(-96 // size))  # show small images at ≥ 96 px
    tile, gap, cap, head = size * zoom, 6, 16, 34
    rows = max(1, -(-n // ncol))
    width = ncol * (2 * tile + 3 * gap)
    canvas = Image.new("L", (width, head + rows * (tile + cap + gap)), 255)
    draw = ImageDraw.Draw(canvas)
    draw.text((gap, 4), title, fill=0)
    draw.text((gap, 18), f"each pair: {left_name} | {right_name}" if n else "no pairs", fill=0)
    for i in range(n):
        r, c = divmod(i, ncol)
        x0, y0 = c * (2 * tile + 3 * gap) + gap, head + r * (tile + cap + gap)
        for j, img in enumerate((left[i], right[i])):
            im = Image.fromarray(img).resize((tile, tile), Image.NEAREST)
            canvas.paste(im, (x0 + j * (tile + gap), y0))
        draw.text((x0, y0 + tile + 2), captions[i][: 2 * tile // 6], fill=0)
    save_png(path, np.asarray(canvas))


def scatter(path, xy: np.ndarray, groups: np.ndarray, title: str, max_legend: int = 20) -> None:
    """2-D scatter coloured by group (small points, drawn in a seeded random order so no group hides another)."""
    fig, ax = plt.subplots(figsize=(6, 5))
    names = sorted(set(groups.tolist()))
    order = np.random.default_rng(0).permutation(len(xy))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    colors = {g: cmap(i % cmap.N) for i, g in enumerate(names)}
    ax.scatter(xy[order, 0], xy[order, 1], s=4, c=[colors[g] for g in groups[order]], linewidths=0)
    for g in names[:max_legend]:
        ax.scatter([], [], s=16, color=colors[g], label=f"{g} ({int((groups == g).sum())})")
    ax.legend(fontsize=7, markerscale=1.5, loc="best")
    ax.set(title=title, xticks=[], yticks=[])
    save_figure(fig, path)


def density_panels(path, xy: np.ndarray, views: np.ndarray, kinds: np.ndarray, title: str, grid: int = 120) -> None:
    """Per-view 2-D densities (Gaussian KDE, Scott's bandwidth), real beside synthetic, on shared axes."""
    from scipy.stats import gaussian_kde

    view_names = sort_views(set(views.tolist()))
    fig, axes = plt.subplots(len(view_names), 2, figsize=(6, 2.8 * len(view_names)), squeeze=False, layout="constrained")
    lo, hi = xy.min(0), xy.max(0)
    pad = 0.05 * (hi - lo)
    gx, gy = np.meshgrid(np.linspace(lo[0] - pad[0], hi[0] + pad[0], grid), np.linspace(lo[1] - pad[1], hi[1] + pad[1], grid))
    for r, v in enumerate(view_names):
        for c, k in enumerate(("real", "synthetic")):
            ax = axes[r, c]
            pts = xy[(views == v) & (kinds == k)]
            try:
                z = gaussian_kde(pts.T)(np.vstack([gx.ravel(), gy.ravel()])).reshape(grid, grid)
                ax.contourf(gx, gy, z, levels=12, cmap="magma")
            except (ValueError, np.linalg.LinAlgError):  # too few or collinear points for a KDE
                ax.set_facecolor("black")
            ax.scatter(pts[:, 0], pts[:, 1], s=1, c="white", alpha=0.4, linewidths=0)
            ax.set(xticks=[], yticks=[], xlim=(gx[0, 0], gx[0, -1]), ylim=(gy[0, 0], gy[-1, 0]),
                   title=f"{v} · {k} (n={len(pts)})")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
