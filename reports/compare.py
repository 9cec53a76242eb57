"""Differences between two classifier runs with their uncertainty: a gain or a loss only when it exceeds it.

- Both runs with ≥ 2 seeds: Welch's t interval of the difference of seed means (95%).
- Otherwise: a bootstrap over the evaluation images (95% percentile interval). When both runs were
  scored on the same images (the same validation split) the resampling is paired, so the images'
  own difficulty cancels. Such an interval covers the evaluation set's sampling noise only, not
  the spread of training seeds, and the report says so.

Macro AUPRC under bootstrap weights is computed exactly as sklearn's `average_precision_score`
(Σ over distinct thresholds of ΔRecall × Precision) with each image counted as often as it was
drawn, vectorised over the resamples. Reads predictions_<set>.csv and summary.json only.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reports.collect import metric_summary, seed_dirs

LEVEL = 0.95
N_BOOT = 1000


@dataclass
class Diff:
    """b − a with a 95% interval; `how` says where the interval comes from."""

    a: float
    b: float
    lo: float | None
    hi: float | None
    how: str

    @property
    def delta(self) -> float:
        return self.b - self.a

    @property
    def verdict(self) -> str:
        """'gain' / 'loss' when the interval excludes 0, else 'no clear difference'."""
        if self.lo is None or self.hi is None:
            return "no clear difference"
        return "gain" if self.lo > 0 else "loss" if self.hi < 0 else "no clear difference"

    def text(self, fmt: str = ".3f") -> str:
        """'+0.021 (95% −0.040 to +0.080, paired bootstrap over 120 val images, one seed): no clear difference'."""
        ci = (f"95% {self.lo:+{fmt}} to {self.hi:+{fmt}}, " if self.lo is not None else "no interval: ")
        return f"{self.delta:+{fmt}} ({ci}{self.how}): {self.verdict}"


# ----------------------------------------------------------------------------------------------
# Weighted average precision


def weighted_ap(y: np.ndarray, score: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average precision of binary labels y (N) and scores (N) under weight rows w (B×N); NaN where no positive weight."""
    order = np.argsort(-score, kind="mergesort")
    s, yy, ww = score[order], y[order].astype(float), w[:, order].astype(float)
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # last index of each distinct threshold
    tp = np.cumsum(ww * yy, axis=1)[:, ends]
    seen = np.cumsum(ww, axis=1)[:, ends]
    total = tp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(seen > 0, tp / seen, 0.0)
        recall = tp / total
    d_recall = np.diff(np.concatenate([np.zeros((len(w), 1)), recall], axis=1), axis=1)
    ap = (d_recall * precision).sum(1)
    return np.where(total[:, 0] > 0, ap, np.nan)


def macro_auprc(labels: np.ndarray, probs: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Macro AUPRC over the classes present (weight > 0) in each weight row: B values."""
    per = np.stack([weighted_ap(labels == c, probs[:, c], w) for c in range(probs.shape[1])
                    if (labels == c).any()], axis=1)
    with warnings.catch_warnings():  # a resample without any class present gives NaN, dropped later
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(per, axis=1)


def mean_recall(labels: np.ndarray, pred: np.ndarray, classes: list[int], w: np.ndarray) -> np.ndarray:
    """Mean over `classes` of the weighted share of each class's images predicted as that class: B values."""
    out = []
    for c in classes:
        m = labels == c
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append((w[:, m] * (pred[m] == c)).sum(1) / w[:, m].sum(1))
    with warnings.catch_warnings():  # a resample without any image of these classes gives NaN, dropped later
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.stack(out, axis=1), axis=1)


# ----------------------------------------------------------------------------------------------
# Predictions of a run


@dataclass
class Predictions:
    paths: np.ndarray
    labels: np.ndarray  # class index per image
    probs: np.ndarray  # N×K
    classes: list[str]

    @property
    def pred(self) -> np.ndarray:
        return self.probs.argmax(1)


def load_predictions(run_dir: Path, eval_set: str = "val") -> Predictions | None:
    """The first seed's predictions_<set>.csv (path, label, prob_<class>…), or None."""
    import pandas as pd

    for d in seed_dirs(run_dir):
        f = d / f"predictions_{eval_set}.csv"
        if not f.is_file():
            continue
        try:
            df = pd.read_csv(f, keep_default_na=False)
            classes = [c[5:] for c in df.columns if c.startswith("prob_")]
            index = {c: i for i, c in enumerate(classes)}
            labels = df["label"].astype(str).map(index)
            if labels.isna().any() or not classes:
                return None
            return Predictions(df["path"].astype(str).to_numpy(), labels.to_numpy(int),
                               df[[f"prob_{c}" for c in classes]].to_numpy(float), classes)
        except (OSError, ValueError, KeyError):
            return None
    return None


def welch_interval(ma: float, sa: float, na: int, mb: float, sb: float, nb: int) -> tuple[float, float]:
    """95% Welch t interval of mb − ma from seed means, sds (n−1) and counts (each n ≥ 2)."""
    from scipy.stats import t

    va, vb = sa ** 2 / na, sb ** 2 / nb
    se = float(np.sqrt(va + vb))
    d = float(mb - ma)
    if se == 0:
        return d, d
    df = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    q = float(t.ppf(0.5 + LEVEL / 2, df))
    return d - q * se, d + q * se


def _bootstrap(pa: Predictions, pb: Predictions, stat, n_boot: int, seed: int) -> tuple[float, float, float, float, str]:
    """(a, b, lo, hi, how) of stat(predictions, weights) under paired (same images) or independent resampling."""
    rng = np.random.default_rng(seed)
    one = lambda p: stat(p, np.ones((1, len(p.labels))))[0]  # noqa: E731
    a, b = one(pa), one(pb)
    if len(pa.paths) == len(pb.paths) and set(pa.paths) == set(pb.paths):
        pos = {p: i for i, p in enumerate(pa.paths)}
        order = np.array([pos[p] for p in pb.paths])
        w = rng.multinomial(len(pa.paths), np.full(len(pa.paths), 1 / len(pa.paths)), size=n_boot)
        diffs = stat(pb, w[:, order]) - stat(pa, w)  # pb's row j is pa's row order[j]
        how = f"paired bootstrap over {len(pa.paths)} images"
    else:
        wa = rng.multinomial(len(pa.paths), np.full(len(pa.paths), 1 / len(pa.paths)), size=n_boot)
        wb = rng.multinomial(len(pb.paths), np.full(len(pb.paths), 1 / len(pb.paths)), size=n_boot)
        diffs = stat(pb, wb) - stat(pa, wa)
        how = f"bootstrap over {len(pa.paths)} and {len(pb.paths)} images"
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) < n_boot // 2:
        return a, b, None, None, how
    alpha = (1 - LEVEL) / 2
    return a, b, float(np.quantile(diffs, alpha)), float(np.quantile(diffs, 1 - alpha)), how


def compare_runs(run_a: Path, run_b: Path, eval_set: str = "val", eval_set_b: str | None = None,
                 metric: str = "macro_auprc", n_boot: int = N_BOOT, seed: int = 0) -> Diff | None:
    """Macro AUPRC (or another summary metric with seeds) of run b minus run a, with its 95% interval; None if unscored."""
    set_b = eval_set_b or eval_set
    (ma, sa, na), (mb, sb, nb) = metric_summary(run_a, eval_set, metric), metric_summary(run_b, set_b, metric)
    if ma is None or mb is None:
        return None
    if na >= 2 and nb >= 2 and sa is not None and sb is not None:
        lo, hi = welch_interval(ma, sa, na, mb, sb, nb)
        return Diff(ma, mb, lo, hi, f"Welch t over {na} and {nb} seeds")
    pa, pb = load_predictions(run_a, eval_set), load_predictions(run_b, set_b)
    if pa is None or pb is None or metric != "macro_auprc":
        return Diff(ma, mb, None, None, "one seed and no saved predictions")
    a, b, lo, hi, how = _bootstrap(pa, pb, lambda p, w: macro_auprc(p.labels, p.probs, w), n_boot, seed)
    return Diff(a, b, lo, hi, how + (f" ({eval_set}), one seed" if set_b == eval_set else ", one seed"))


def compare_recall(run_a: Path, run_b: Path, classes: list[str], eval_set: str = "val",
                   n_boot: int = N_BOOT, seed: int = 0) -> Diff | None:
    """Mean recall over `classes` of run b minus run a (paired bootstrap over the images of the first seed)."""
    pa, pb = load_predictions(run_a, eval_set), load_predictions(run_b, eval_set)
    if pa is None or pb is None or pa.classes != pb.classes:
        return None
    idx = [pa.classes.index(c) for c in classes if c in pa.classes]
    if not idx:
        return None
    a, b, lo, hi, how = _bootstrap(pa, pb, lambda p, w: mean_recall(p.labels, p.pred, idx, w), n_boot, seed)
    n = sum(int((pa.labels == i).sum()) for i in idx)
    return Diff(a, b, lo, hi, f"{how} ({n} of them in these classes), first seed")
