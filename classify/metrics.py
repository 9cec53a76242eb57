"""Classification and grading metrics, prediction tables, confusion plots, seed summaries.

Macro averages run over the classes present in the evaluation set, so a domain-shift test set
holding 3 of the 4 training views is scored on those 3 (and flagged `subset_of_training_classes`);
predictions of an absent class still count as errors.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from echosynth.gen.core.io import atomic_path

SCALAR_METRICS = ("macro_auprc", "macro_f1", "balanced_accuracy", "roc_auc", "accuracy", "top_prediction_share",
                  "video_accuracy", "grade_mse", "grade_mae", "grade_spearman")


def _nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def classification_metrics(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                           video_ids: np.ndarray | None = None) -> dict:
    """Macro AUPRC, macro F1, balanced accuracy, ROC-AUC, per-class P/R/F1, confusion (raw, row-normalised)."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    if probs.shape != (len(labels), k):
        raise ValueError(f"probabilities have shape {probs.shape}, expected ({len(labels)}, {k})")
    pred = probs.argmax(1)
    present = sorted(int(c) for c in np.unique(labels))
    onehot = np.eye(k, dtype=int)[labels]
    auprc = [average_precision_score(onehot[:, c], probs[:, c]) for c in present]
    auroc = [roc_auc_score(onehot[:, c], probs[:, c]) for c in present] if len(present) > 1 else []
    with warnings.catch_warnings():  # predictions of absent classes are expected under domain shift
        warnings.simplefilter("ignore")
        p, r, f, s = precision_recall_fscore_support(labels, pred, labels=list(range(k)), zero_division=0)
        macro_f1 = f1_score(labels, pred, labels=present, average="macro", zero_division=0)
        bacc = balanced_accuracy_score(labels, pred)
    cm = confusion_matrix(labels, pred, labels=list(range(k)))
    rows = cm.sum(1, keepdims=True)
    norm = np.where(rows > 0, cm / np.maximum(rows, 1), np.nan)
    out = {
        "n": int(len(labels)),
        "classes": list(classes),
        "present_classes": [classes[c] for c in present],
        "subset_of_training_classes": len(present) < k,
        "macro_auprc": float(np.mean(auprc)),
        "macro_f1": float(macro_f1),
        "balanced_accuracy": float(bacc),
        "roc_auc": float(np.mean(auroc)) if auroc else None,
        "accuracy": float((pred == labels).mean()),
        # the share of images given the most-predicted class: near 1, the classifier predicts one class
        "top_prediction_share": float(np.bincount(pred, minlength=k).max() / max(len(pred), 1)),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i]),
                "auprc": float(auprc[present.index(i)]) if i in present else None}
            for i, c in enumerate(classes)
        },
        "confusion": cm.tolist(),
        "confusion_normalized": [[_nan_to_none(v) for v in row] for row in norm.tolist()],
    }
    if video_ids is not None and (np.asarray(video_ids) != "").any():
        out.update(video_metrics(labels, probs, np.asarray(video_ids)))
    return out


def video_metrics(labels: np.ndarray, probs: np.ndarray, video_ids: np.ndarray) -> dict:
    """Video-level accuracy by majority vote of frame predictions (ties: highest summed probability)."""
    keep = video_ids != ""
    df = pd.DataFrame({"video": video_ids[keep], "label": labels[keep], "pred": probs[keep].argmax(1)})
    summed = pd.DataFrame(probs[keep]).groupby(df["video"].to_numpy()).sum()
    votes = df.groupby(["video", "pred"]).size().unstack(fill_value=0).reindex(columns=summed.columns, fill_value=0)
    votes = votes.reindex(summed.index)
    # Lexicographic: most votes first, then the larger summed probability breaks a tie.
    score = votes.to_numpy() * 1e6 + summed.to_numpy()
    video_pred = pd.Series(score.argmax(1), index=summed.index)
    video_label = df.groupby("video")["label"].agg(lambda s: s.value_counts().idxmax())
    video_pred = video_pred.reindex(video_label.index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bacc = balanced_accuracy_score(video_label, video_pred)
    return {"video_accuracy": float((video_pred == video_label).mean()), "n_videos": int(len(video_label)),
            "video_balanced_accuracy": float(bacc)}


def grade_metrics(true: np.ndarray, pred: np.ndarray) -> dict:
    """MSE, MAE and Spearman ρ of 0–10 grades over rows with a known grade."""
    from scipy.stats import spearmanr

    true, pred = np.asarray(true, float), np.asarray(pred, float)
    keep = ~np.isnan(true)
    if not keep.any():
        return {"grade_n": 0, "grade_mse": None, "grade_mae": None, "grade_spearman": None}
    t, p = true[keep], pred[keep]
    rho = spearmanr(t, p).statistic if len(t) > 1 and t.std() > 0 and p.std() > 0 else float("nan")
    return {"grade_n": int(keep.sum()), "grade_mse": float(np.mean((t - p) ** 2)),
            "grade_mae": float(np.mean(np.abs(t - p))), "grade_spearman": _nan_to_none(float(rho))}


# ----------------------------------------------------------------------------------------------
# Files


def predictions_frame(paths: Sequence[str], labels: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                      grades: np.ndarray | None = None, quality: np.ndarray | None = None,
                      video_ids: np.ndarray | None = None) -> pd.DataFrame:
    """The predictions table: path, label, prob_<class>…, pred (+ grade, quality, video_id if known)."""
    df = pd.DataFrame({"path": list(paths), "label": [classes[i] for i in labels]})
    for i, c in enumerate(classes):
        df[f"prob_{c}"] = probs[:, i]
    df["pred"] = [classes[i] for i in probs.argmax(1)]
    if grades is not None:
        df["grade"] = grades
    if quality is not None:
        df["quality"] = quality
    if video_ids is not None:
        df["video_id"] = video_ids
    return df


def write_predictions(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Atomically write a predictions CSV."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.9g")


def metrics_from_predictions(path: str | os.PathLike, classes: Sequence[str] | None = None) -> dict:
    """Recompute classification metrics from a saved predictions CSV."""
    df = pd.read_csv(path, keep_default_na=False)
    cols = [c for c in df.columns if c.startswith("prob_")]
    classes = list(classes) if classes is not None else [c[5:] for c in cols]
    index = {c: i for i, c in enumerate(classes)}
    probs = df[[f"prob_{c}" for c in classes]].to_numpy(float)
    vids = df["video_id"].astype(str).to_numpy() if "video_id" in df.columns else None
    return classification_metrics(df["label"].map(index).to_numpy(), probs, classes, vids)


def save_confusion_png(metrics: dict, path: str | os.PathLike, title: str = "") -> None:
    """Row-normalised confusion matrix with raw counts in each cell, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = metrics["classes"]
    cm = np.array(metrics["confusion"])
    norm = np.array([[np.nan if v is None else v for v in row] for row in metrics["confusion_normalized"]], float)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.1 * len(classes) + 1.5))
    ax.imshow(np.nan_to_num(norm), vmin=0, vmax=1, cmap="Blues")
    for i in range(len(classes)):
        for j in range(len(classes)):
            txt = "–" if np.isnan(norm[i, j]) else f"{norm[i, j]:.2f}\n({cm[i, j]})"
            ax.text(j, i, txt, ha="center", va="center", fontsize=8,
                    color="white" if np.nan_to_num(norm[i, j]) > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"macro AUPRC {metrics['macro_auprc']:.3f}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def summarize_seeds(per_seed: list[dict]) -> dict:
    """Per set and scalar metric: mean, sd (n−1; 0 for one seed) and n over seeds."""
    out: dict[str, dict] = {}
    for m in per_seed:
        for name, vals in m.items():
            for key in SCALAR_METRICS:
                v = vals.get(key)
                if v is not None:
                    out.setdefault(name, {}).setdefault(key, []).append(float(v))
    return {name: {k: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                       "n": len(v), "values": v} for k, v in d.items()} for name, d in out.items()}
