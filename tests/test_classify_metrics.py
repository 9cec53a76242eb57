"""Metrics checked against scikit-learn / scipy, on saved predictions too; video vote; seed summaries."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from echosynth.classify.metrics import (
    classification_metrics,
    grade_metrics,
    metrics_from_predictions,
    predictions_frame,
    save_confusion_png,
    summarize_seeds,
    video_metrics,
    write_predictions,
)

CLASSES = ["A2C", "A4C", "PLAX", "PSAX"]


def random_predictions(n=200, k=4, seed=0, present=None):
    rng = np.random.default_rng(seed)
    labels = rng.choice(present if present is not None else k, size=n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]  # informative but imperfect
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return labels, probs


def test_against_sklearn_all_classes():
    y, p = random_predictions()
    m = classification_metrics(y, p, CLASSES)
    pred = p.argmax(1)
    assert m["macro_auprc"] == pytest.approx(average_precision_score(np.eye(4)[y], p, average="macro"))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["confusion"] == confusion_matrix(y, pred).tolist()
    prec, rec = precision_score(y, pred, average=None), recall_score(y, pred, average=None)
    for i, c in enumerate(CLASSES):
        assert m["per_class"][c]["precision"] == pytest.approx(prec[i])
        assert m["per_class"][c]["recall"] == pytest.approx(rec[i])
        assert m["per_class"][c]["support"] == int((y == i).sum())
    assert np.allclose(np.sum(m["confusion_normalized"], 1), 1)
    assert not m["subset_of_training_classes"]


def test_domain_shift_subset_of_classes():
    y, p = random_predictions(present=[0, 1, 2], seed=1)  # no PSAX in the test set
    m = classification_metrics(y, p, CLASSES)
    pred = p.argmax(1)
    assert m["subset_of_training_classes"] and m["present_classes"] == ["A2C", "A4C", "PLAX"]
    assert m["macro_auprc"] == pytest.approx(average_precision_score(np.eye(4)[y][:, :3], p[:, :3], average="macro"))
    assert m["roc_auc"] == pytest.approx(np.mean([roc_auc_score(y == c, p[:, c]) for c in range(3)]))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, labels=[0, 1, 2], average="macro"))
    assert m["per_class"]["PSAX"]["support"] == 0 and m["confusion_normalized"][3] == [None] * 4
    json.dumps(m, allow_nan=False)  # valid JSON: no NaN


def test_saved_predictions_round_trip(tmp_path):
    y, p = random_predictions(n=120, seed=2)
    vids = np.array([f"v{i // 6}" for i in range(120)], dtype=object)
    df = predictions_frame([f"img{i}.png" for i in range(120)], y, p, CLASSES, video_ids=vids)
    assert list(df.columns[:7]) == ["path", "label", "prob_A2C", "prob_A4C", "prob_PLAX", "prob_PSAX", "pred"]
    write_predictions(df, tmp_path / "predictions_val.csv")
    again = metrics_from_predictions(tmp_path / "predictions_val.csv")
    direct = classification_metrics(y, p, CLASSES, vids)
    for key in ("macro_auprc", "macro_f1", "balanced_accuracy", "roc_auc", "video_accuracy"):
        assert again[key] == pytest.approx(direct[key], abs=1e-5)
    assert again["confusion"] == direct["confusion"]
    save_confusion_png(direct, tmp_path / "confusion_val.png")
    assert (tmp_path / "confusion_val.png").read_bytes()[:4] == b"\x89PNG"


def test_video_majority_vote():
    labels = np.array([1, 1, 1, 2, 2, 0, 0])
    # video a: frames predicted 1, 1, 0 -> 1 (right); b: 2, 3 tie -> larger summed prob (3, wrong);
    # c: 0, 0 -> 0 (right)
    preds = [1, 1, 0, 2, 3, 0, 0]
    probs = np.full((7, 4), 0.1)
    probs[np.arange(7), preds] = 0.7
    probs[4, 3] = 0.8
    vids = np.array(["a", "a", "a", "b", "b", "c", "c"])
    m = video_metrics(labels, probs, vids)
    assert m["n_videos"] == 3 and m["video_accuracy"] == pytest.approx(2 / 3)


def test_grade_metrics_against_scipy():
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 10, 50)
    p = t + rng.normal(0, 1, 50)
    t_nan = t.copy()
    t_nan[:5] = np.nan  # ungraded rows are skipped
    m = grade_metrics(t_nan, p)
    assert m["grade_n"] == 45
    assert m["grade_mse"] == pytest.approx(np.mean((t[5:] - p[5:]) ** 2))
    assert m["grade_mae"] == pytest.approx(np.mean(np.abs(t[5:] - p[5:])))
    assert m["grade_spearman"] == pytest.approx(spearmanr(t[5:], p[5:]).statistic)
    assert grade_metrics(np.full(3, np.nan), np.zeros(3))["grade_mse"] is None


def test_summarize_seeds():
    per_seed = [{"val": {"macro_auprc": a, "macro_f1": 0.5, "roc_auc": None}} for a in (0.6, 0.8, 1.0)]
    s = summarize_seeds(per_seed)
    assert s["val"]["macro_auprc"]["mean"] == pytest.approx(0.8)
    assert s["val"]["macro_auprc"]["sd"] == pytest.approx(0.2) and s["val"]["macro_auprc"]["n"] == 3
    assert s["val"]["macro_f1"]["sd"] == 0 and "roc_auc" not in s["val"]
