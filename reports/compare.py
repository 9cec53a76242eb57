"""Differences between classifier runs with their uncertainty: a gain or a loss only when it exceeds it.

Intervals are a bootstrap over images nested in seeds (95% percentile interval). Each resample

1. draws one weight row over the evaluation images, w ~ Multinomial(N, 1/N) (image i counted w_i times);
   runs scored on the same images (the same test split) share it (paired: the images' own difficulty
   cancels), runs on different images get one each;
2. draws, for each run, S seed indices with replacement from its S seeds;
3. scores each drawn seed's predictions under w and averages them: the run's value in this resample.

The difference b − a of the run values over N_BOOT resamples gives the interval; with one seed it is
the image bootstrap alone, with many images and seeds it covers both the spread of training seeds
and the sampling noise of the evaluation set. Draws come from one numpy Generator in that order
(image rows for all resamples first, then each run's seed indices), so a hand computation with the
same seed reproduces them (tests/test_report.py).

Findings are computed on a split that did not select the checkpoint (`findings_split`): the test
split when a run kept its best checkpoint on validation. Asking for the selecting split raises
SelectionLeak.

Macro AUPRC under bootstrap weights is computed exactly as sklearn's `average_precision_score`
(Σ over distinct thresholds of ΔRecall × Precision) with each image counted as often as it was
drawn, vectorised over the resamples; balanced accuracy as sklearn's `balanced_accuracy_score` with
sample weights (the mean recall over the classes present). Reads predictions_<set>.csv and
summary.json only.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from echosynth.reports.collect import metric_summary, read_json_or_none, seed_dirs

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
    eval_set: str = ""  # the split it was computed on


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
        """'+0.021 (95% −0.040 to +0.080, nested bootstrap: 3 and 3 seeds × the same 400 test images (…)): no clear difference'."""
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

    def aligned(self, paths: np.ndarray) -> Predictions:
        """The same predictions in the order of `paths` (the same image set)."""
        pos = {p: i for i, p in enumerate(self.paths)}
        order = np.array([pos[p] for p in paths])
        return Predictions(self.paths[order], self.labels[order], self.probs[order], self.classes)


def _read_predictions(f: Path) -> Predictions | None:
    import pandas as pd

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


def load_seed_predictions(run_dir: Path, eval_set: str) -> list[Predictions]:
    """predictions_<set>.csv of every seed that has a readable one, by seed."""
    out = []
    for d in seed_dirs(run_dir):
        f = d / f"predictions_{eval_set}.csv"
        p = _read_predictions(f) if f.is_file() else None
        if p is not None:
            out.append(p)
    return out


def load_predictions(run_dir: Path, eval_set: str = "val") -> Predictions | None:
    """The first seed's predictions_<set>.csv (path, label, prob_<class>…), or None."""
    seeds = load_seed_predictions(run_dir, eval_set)
    return seeds[0] if seeds else None


def class_counts(p: Predictions) -> str:
    """'A2C 169, A4C 724, PLAX 907, PSAX 135': images per class of an evaluation set."""
    n = np.bincount(p.labels, minlength=len(p.classes))
    return ", ".join(f"{c} {k}" for c, k in zip(p.classes, n) if k)


# ----------------------------------------------------------------------------------------------
# Which split a finding may use


class SelectionLeak(ValueError):
    """A finding asked for the split that selected a run's checkpoint."""


def training_info(run_dir: Path) -> dict:
    """summary.json's `training` record; a run written before it existed selected its best checkpoint on val."""
    summary = read_json_or_none(Path(run_dir) / "summary.json") or {}
    t = summary.get("training")
    return t if isinstance(t, dict) else {"selected_on": "val", "checkpoint": "best"}


def selection_split(run_dir: Path) -> str | None:
    """The evaluation set that picked the run's scored checkpoint (None: it kept its last one)."""
    return training_info(run_dir).get("selected_on")


def findings_split(*runs: Path) -> str | None:
    """The evaluation set findings about these runs are computed on: test when no run selected on it,
    else another set every run has and none selected on (never a domain-shift set); None if there is none."""
    selected = {selection_split(r) for r in runs}
    sets = None
    for r in runs:
        have = {p.name[len("predictions_"):-len(".csv")] for d in seed_dirs(r) for p in d.glob("predictions_*.csv")}
        have |= {k for k, v in (read_json_or_none(Path(r) / "summary.json") or {}).items()
                 if isinstance(v, dict) and "macro_auprc" in v}
        sets = have if sets is None else sets & have
    for name in ["test", "val", *sorted(sets or ())]:
        if name in (sets or ()) and name not in selected and "shift" not in name:
            return name
    return None


def check_not_selection(run_dir: Path, eval_set: str) -> None:
    """Raise SelectionLeak when `eval_set` picked the run's checkpoint."""
    if selection_split(run_dir) == eval_set:
        raise SelectionLeak(f"{run_dir}: its checkpoint was selected on {eval_set!r}, so a finding on {eval_set!r} "
                            "would be biased upwards; use another split (findings_split) or train with --checkpoint last")


# ----------------------------------------------------------------------------------------------
# The nested bootstrap


def _stat(metric: str, classes: list[int] | None = None):
    """stat(predictions, weights B×N) -> B values of a metric under image weights."""
    if metric == "macro_auprc":
        return lambda p, w: macro_auprc(p.labels, p.probs, w)
    if metric == "balanced_accuracy":
        return lambda p, w: mean_recall(p.labels, p.pred, sorted(set(p.labels.tolist())), w)
    if metric == "recall":
        return lambda p, w: mean_recall(p.labels, p.pred, classes or [], w)
    raise ValueError(f"no bootstrap for metric {metric!r}")


def nested_bootstrap(stat, arms: list[list[Predictions]], n_boot: int = N_BOOT, seed: int = 0,
                     paired: bool | None = None, same_seeds: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(point value per arm, n_boot × arms resampled values) of `stat` under the bootstrap of the module docstring.

    `arms[a]` holds one Predictions per seed. paired (default: every arm's first seed has the same image
    paths) shares the image weights, aligned by path; same_seeds draws one set of seed indices for all arms
    (one run scored on two sets)."""
    rng = np.random.default_rng(seed)
    ref = arms[0][0]
    if paired is None:
        paired = all(len(s[0].paths) == len(ref.paths) and set(s[0].paths) == set(ref.paths) for s in arms)
    if paired:
        arms = [[p.aligned(ref.paths) for p in seeds] for seeds in arms]
        n = len(ref.paths)
        w = rng.multinomial(n, np.full(n, 1 / n), size=n_boot)
        weights = [w] * len(arms)
    else:
        weights = [rng.multinomial(len(s[0].paths), np.full(len(s[0].paths), 1 / len(s[0].paths)), size=n_boot)
                   for s in arms]
    draws, shared = [], None
    for seeds in arms:
        if same_seeds and shared is not None and len(seeds) == shared.shape[1]:
            draws.append(shared)
            continue
        shared = rng.integers(0, len(seeds), size=(n_boot, len(seeds)))
        draws.append(shared)
    points, values = [], []
    for seeds, w, idx in zip(arms, weights, draws):
        per_seed = np.stack([stat(p, w) for p in seeds])  # S × B
        points.append(float(np.mean([stat(p, np.ones((1, len(p.paths))))[0] for p in seeds])))
        with warnings.catch_warnings():  # a resample without a class present gives NaN, dropped later
            warnings.simplefilter("ignore", RuntimeWarning)
            values.append(np.mean(per_seed[idx, np.arange(n_boot)[:, None]], axis=1))
    return np.array(points), np.stack(values, axis=1)


def _interval(x: np.ndarray, n_boot: int) -> tuple[float | None, float | None]:
    x = x[np.isfinite(x)]
    if len(x) < n_boot // 2:
        return None, None
    alpha = (1 - LEVEL) / 2
    return float(np.quantile(x, alpha)), float(np.quantile(x, 1 - alpha))


def _how(arms: list[list[Predictions]], sets: list[str], paired: bool) -> str:
    seeds = " and ".join(str(len(a)) for a in arms) + (" seed" if len(arms) == 1 and len(arms[0]) == 1 else " seeds")
    if paired:
        return (f"nested bootstrap: {seeds} × the same {len(arms[0][0].paths)} {sets[0]} images "
                f"({class_counts(arms[0][0])})")
    parts = [f"{len(a[0].paths)} {s} images ({class_counts(a[0])})" for a, s in zip(arms, sets)]
    return f"nested bootstrap: {seeds} × " + " and ".join(parts)


def metric_interval(run_dir: Path, eval_set: str, metric: str = "balanced_accuracy", n_boot: int = N_BOOT,
                    seed: int = 0) -> tuple[float, float | None, float | None, str] | None:
    """(seed-mean value, 95% low, high, how) of one run's metric on one set (the nested bootstrap), or None."""
    preds = load_seed_predictions(run_dir, eval_set)
    if not preds:
        return None
    points, values = nested_bootstrap(_stat(metric), [preds], n_boot, seed)
    lo, hi = _interval(values[:, 0], n_boot)
    return float(points[0]), lo, hi, _how([preds], [eval_set], False)


def compare_runs(run_a: Path, run_b: Path, eval_set: str | None = None, eval_set_b: str | None = None,
                 metric: str = "macro_auprc", n_boot: int = N_BOOT, seed: int = 0) -> Diff | None:
    """Macro AUPRC (or balanced accuracy) of run b minus run a with its 95% nested-bootstrap interval, on
    `eval_set` (default: findings_split) and, for b, `eval_set_b`; None if unscored. SelectionLeak when a
    set is the one that selected that run's checkpoint."""
    set_a = eval_set or findings_split(run_a, run_b)
    if set_a is None:
        return None
    set_b = eval_set_b or set_a
    check_not_selection(run_a, set_a)
    check_not_selection(run_b, set_b)
    pa, pb = load_seed_predictions(run_a, set_a), load_seed_predictions(run_b, set_b)
    if not pa or not pb or metric not in ("macro_auprc", "balanced_accuracy"):
        (ma, _, _), (mb, _, _) = metric_summary(run_a, set_a, metric), metric_summary(run_b, set_b, metric)
        if ma is None or mb is None:
            return None
        return Diff(ma, mb, None, None, f"no saved predictions on {set_a}", set_a)
    same = Path(run_a) == Path(run_b)
    paired = set_a == set_b and set(pa[0].paths) == set(pb[0].paths)
    points, values = nested_bootstrap(_stat(metric), [pa, pb], n_boot, seed, paired=paired, same_seeds=same)
    lo, hi = _interval(values[:, 1] - values[:, 0], n_boot)
    return Diff(float(points[0]), float(points[1]), lo, hi, _how([pa, pb], [set_a, set_b], paired), set_a)


def compare_recall(run_a: Path, run_b: Path, classes: list[str], eval_set: str | None = None,
                   n_boot: int = N_BOOT, seed: int = 0) -> Diff | None:
    """Mean recall over `classes` of run b minus run a (nested bootstrap, paired images) on the findings split."""
    eval_set = eval_set or findings_split(run_a, run_b)
    if eval_set is None:
        return None
    check_not_selection(run_a, eval_set)
    check_not_selection(run_b, eval_set)
    pa, pb = load_seed_predictions(run_a, eval_set), load_seed_predictions(run_b, eval_set)
    if not pa or not pb or pa[0].classes != pb[0].classes:
        return None
    idx = [pa[0].classes.index(c) for c in classes if c in pa[0].classes]
    if not idx:
        return None
    points, values = nested_bootstrap(_stat("recall", idx), [pa, pb], n_boot, seed)
    lo, hi = _interval(values[:, 1] - values[:, 0], n_boot)
    n = sum(int((pa[0].labels == i).sum()) for i in idx)
    how = _how([pa, pb], [eval_set, eval_set], True) + f", {n} of them in these classes"
    return Diff(float(points[0]), float(points[1]), lo, hi, how, eval_set)
