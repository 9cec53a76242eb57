"""Matplotlib figures for the report (Agg backend, PNG bytes out)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from echosynth.reports.render import fig_png  # noqa: E402


def lines(series: dict[str, tuple[list[float], list[float | None], list[float | None]]], xlabel: str,
          ylabel: str, title: str, logx: bool = False, size=(5.2, 3.4)) -> bytes:
    """Line plot of {label: (x, y, sd or None)} with error bands where sd is given."""
    fig, ax = plt.subplots(figsize=size)
    for label, (x, y, sd) in series.items():
        pts = [(a, b, s) for a, b, s in zip(x, y, sd) if b is not None]
        if not pts:
            continue
        xs, ys, ss = (np.array([p[i] if p[i] is not None else np.nan for p in pts], dtype=float) for i in range(3))
        ax.plot(xs, ys, marker="o", ms=4, label=label)
        if np.isfinite(ss).any():
            ax.fill_between(xs, ys - np.nan_to_num(ss), ys + np.nan_to_num(ss), alpha=0.15)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    return fig_png(fig)


def training_curves(stats: list[dict], title: str) -> bytes:
    """Loss terms (log scale) and learning rate against step from a DDPM's stats.jsonl."""
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.0))
    steps = [r.get("step", i) for i, r in enumerate(stats)]
    for key in ("loss", "mse", "vb"):
        ys = [r.get(key) for r in stats]
        pts = [(s, y) for s, y in zip(steps, ys) if isinstance(y, (int, float)) and y > 0]
        if pts:
            axes[0].plot(*zip(*pts), label=key, lw=1)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_title(f"{title}: loss", fontsize=10)
    axes[0].legend(fontsize=8)
    axes[0].grid(alpha=0.3)
    lr = [(s, r["lr"]) for s, r in zip(steps, stats) if isinstance(r.get("lr"), (int, float))]
    if lr:
        axes[1].plot(*zip(*lr), color="tab:green", lw=1)
    axes[1].set_xlabel("step")
    axes[1].set_title("learning rate", fontsize=10)
    axes[1].grid(alpha=0.3)
    return fig_png(fig)


def confusion(cm: np.ndarray, classes: list[str], title: str) -> bytes:
    """Row-normalised confusion matrix heat map with the shares printed."""
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * k, 0.8 + 0.7 * k))
    ax.imshow(cm, vmin=0, vmax=1, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > 0.6 else "black")
    ax.set_xticks(range(k), classes, fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return fig_png(fig)


def bars(groups: dict[str, dict[str, tuple[float | None, float | None]]], ylabel: str, title: str) -> bytes:
    """Grouped bars: {group (x tick): {series: (mean, sd)}}."""
    series = sorted({s for g in groups.values() for s in g}, key=list(
        dict.fromkeys(s for g in groups.values() for s in g)).index)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(groups) * max(1, len(series)) / 2), 3.4))
    width = 0.8 / max(1, len(series))
    for j, s in enumerate(series):
        xs = np.arange(len(groups)) + j * width
        means = [groups[g].get(s, (None, None))[0] for g in groups]
        sds = [groups[g].get(s, (None, None))[1] for g in groups]
        ax.bar(xs, [m if m is not None else 0 for m in means], width,
               yerr=[sd if sd is not None else 0 for sd in sds], label=s, capsize=2)
    ax.set_xticks(np.arange(len(groups)) + width * (len(series) - 1) / 2, list(groups))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return fig_png(fig)
