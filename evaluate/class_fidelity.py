"""Class fidelity: does a judge trained on real images recover each synthetic image's conditioning class?

The judge is a view classifier trained on the real training split (`classify/train.py`). Its
argmax is taken over the K classes of the synthetic set, so chance is exactly 1/K. It gives

- acc_syn: the mean over classes of the share of synthetic images of that conditioning class
  that the judge labels with it (the accuracy of a balanced set; `acc_syn_pooled` pools images);
- bacc_real: the judge's balanced accuracy on held-out real images of the same K classes;
- the above-chance ratio (acc_syn − 1/K) / (bacc_real − 1/K): 1 when synthetic images are as
  recognisable as real ones, 0 at chance, negative below it. It compares across image sizes and
  datasets where raw accuracies do not. (Train on real, test on synthetic: the reverse of the
  classification accuracy score, CAS, of Ravuri & Vinyals 2019.)

The 95% interval of the ratio is a stratified bootstrap over both image sets: resampling the n_c
correct/incorrect indicators of class c with replacement gives a mean distributed as
Binomial(n_c, p̂_c)/n_c, which is drawn directly.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np

from echosynth.classify.models import load_classifier
from echosynth.evaluate.features import Extractor, run_extractor
from echosynth.gen.diffusion.synthesis import make_grid

CI_LEVEL = 0.95


class Judge:
    """A trained view classifier as a judge: `classes` and `predict_proba(uint8 N×S×S) -> N×len(classes)`."""

    def __init__(self, model, info: dict, device: str = "cpu", batch_size: int = 256) -> None:
        class _Logits(Extractor):  # the classifier's logits through run_extractor's batching and scaling
            name = "judge"

            def __init__(self, net, size: int) -> None:
                super().__init__()
                self.net, self.image_size = net, size

            def forward(self, x):
                return self.net(x.float())

        self.classes = list(info["classes"])
        self.image_size = int(info["image_size"])
        self.info = {k: info.get(k) for k in ("arch", "seed_dir", "checkpoint", "image_size", "classes")}
        self._net = _Logits(model, self.image_size).eval()
        self.device, self.batch_size = device, batch_size

    @classmethod
    def load(cls, run: str | os.PathLike, which: str = "best", device: str = "cpu") -> Judge:
        """The classifier of a classify/train.py run (its first seed) or RUN/seed-<s>; ValueError naming the run if unusable."""
        try:
            model, info = load_classifier(run, which=which, device=device)
        except (FileNotFoundError, KeyError, ValueError, OSError) as e:
            why = f"model.json lacks the key {e}" if isinstance(e, KeyError) else str(e)
            raise ValueError(f"--judge {run}: cannot load the judge classifier ({why}); give a classify/train.py "
                             "run trained on the real training split") from None
        return cls(model, info, device)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Softmax probabilities (float64 N×len(classes)) of uint8 images at the judge's size."""
        logits = run_extractor(self._net, images, self.batch_size, self.device).astype(np.float64)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)


def _class_order(judge_classes: Sequence[str], views: np.ndarray) -> list[str]:
    present = set(np.unique(np.asarray(views).astype(str)))
    unknown = sorted(present - set(judge_classes))
    if unknown:
        raise ValueError(f"the synthetic set has classes {unknown} that the judge does not know "
                         f"(judge classes: {list(judge_classes)})")
    return [c for c in judge_classes if c in present]


def _predict(judge, images: np.ndarray, classes: list[str]) -> np.ndarray:
    """Indices into `classes` of the judge's argmax restricted to `classes`."""
    if len(images) == 0:
        return np.zeros(0, dtype=np.int64)
    probs = np.asarray(judge.predict_proba(images), dtype=np.float64)
    if probs.shape != (len(images), len(judge.classes)):
        raise ValueError(f"the judge returned probabilities of shape {probs.shape} for {len(images)} images "
                         f"and {len(judge.classes)} classes")
    cols = [list(judge.classes).index(c) for c in classes]
    return probs[:, cols].argmax(1)


def above_chance_ratio(acc_syn: float | None, bacc_real: float | None, k: int) -> float | None:
    """(acc_syn − 1/K) / (bacc_real − 1/K); None when the judge is no better than chance on real images."""
    if acc_syn is None or bacc_real is None or k < 2 or bacc_real - 1.0 / k <= 1e-9:
        return None
    return (acc_syn - 1.0 / k) / (bacc_real - 1.0 / k)


def class_fidelity(judge, syn_images: np.ndarray, syn_views: Sequence[str], real_images: np.ndarray | None,
                   real_views: Sequence[str] | None, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """The judge's per-class and mean accuracy on a synthetic set, its balanced accuracy on held-out real
    images of the same classes, the above-chance ratio and its bootstrap interval (keys: module docstring).

    `judge` is a `Judge` or any object with `classes` and `predict_proba(uint8 N×S×S) -> N×len(classes)`;
    views are class names (map integer labels through the class list first)."""
    syn_views = np.asarray(syn_views).astype(str)
    if len(syn_views) != len(syn_images) or len(syn_images) == 0:
        raise ValueError(f"class fidelity needs one view per synthetic image, got {len(syn_views)} views for "
                         f"{len(syn_images)} images")
    classes = _class_order(judge.classes, syn_views)
    k = len(classes)
    notes: list[str] = []
    syn_y = np.array([classes.index(v) for v in syn_views])
    syn_pred = _predict(judge, syn_images, classes)
    real_y = real_pred = None
    if real_images is not None and real_views is not None and len(real_images):
        rv = np.asarray(real_views).astype(str)
        keep = np.isin(rv, classes)
        real_y = np.array([classes.index(v) for v in rv[keep]])
        real_pred = _predict(judge, real_images[keep], classes)
    else:
        notes.append("no held-out real images: no bacc_real and no ratio (pass --holdout)")
    per_class, syn_acc, real_acc, counts = {}, [], [], []
    for i, c in enumerate(classes):
        s = syn_pred[syn_y == i] == i
        r = None if real_y is None else real_pred[real_y == i] == i
        entry = {"n_syn": int(len(s)), "acc_syn": float(s.mean()),
                 "n_real": 0 if r is None else int(len(r)),
                 "acc_real": float(r.mean()) if r is not None and len(r) else None}
        per_class[c] = entry
        syn_acc.append(entry["acc_syn"])
        if entry["acc_real"] is not None:
            real_acc.append(entry["acc_real"])
        counts.append((len(s), float(s.mean()), len(r) if r is not None else 0,
                       float(r.mean()) if r is not None and len(r) else None))
        if real_y is not None and not entry["n_real"]:
            notes.append(f"no held-out real images of {c}: bacc_real averages the other classes")
    acc_syn = float(np.mean(syn_acc))
    bacc_real = float(np.mean(real_acc)) if real_acc else None
    ratio = above_chance_ratio(acc_syn, bacc_real, k)
    if k < 2:
        notes.append("one class only: chance is 1 and the ratio is undefined")
    elif bacc_real is not None and ratio is None:
        notes.append(f"the judge is no better than chance on real images (balanced accuracy {bacc_real:.3f}, "
                     f"chance {1 / k:.3f}): train a better judge before reading class fidelity")
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (syn_y, syn_pred), 1)
    return {"classes": classes, "k": k, "chance": 1.0 / k, "n_syn": int(len(syn_y)),
            "n_real": 0 if real_y is None else int(len(real_y)),
            "acc_syn": acc_syn, "acc_syn_pooled": float((syn_pred == syn_y).mean()), "bacc_real": bacc_real,
            "ratio": ratio, "ratio_ci": _bootstrap_ratio(counts, k, n_boot, seed) if ratio is not None else None,
            "ci_level": CI_LEVEL, "per_class": per_class,
            "confusion_syn": confusion.tolist(), "notes": notes,
            "judge": getattr(judge, "info", {"name": type(judge).__name__})}


def _bootstrap_ratio(counts: list[tuple], k: int, n_boot: int, seed: int) -> list[float] | None:
    """Percentile interval of the ratio under stratified resampling of both sets (binomial draws per class)."""
    if n_boot < 10:
        return None
    rng = np.random.default_rng(seed)
    syn = np.mean([rng.binomial(n, p, n_boot) / n for n, p, _, _ in counts], axis=0)
    real = [rng.binomial(n, p, n_boot) / n for _, _, n, p in counts if p is not None and n]
    if not real:
        return None
    real = np.mean(real, axis=0)
    ok = real - 1.0 / k > 1e-9
    if ok.mean() < 0.5:
        return None
    r = (syn[ok] - 1.0 / k) / (real[ok] - 1.0 / k)
    a = (1 - CI_LEVEL) / 2
    return [float(np.quantile(r, a)), float(np.quantile(r, 1 - a))]


def class_grid(syn_images: np.ndarray, syn_views: Sequence[str], real_images: np.ndarray,
               real_views: Sequence[str], classes: Sequence[str], per_class: int = 8,
               scores: dict | None = None) -> bytes:
    """PNG bytes: one row per class, `per_class` synthetic images beside `per_class` real images of that class,
    titled with the judge's per-class accuracy when `scores` (class_fidelity's per_class) is given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    syn_views, real_views = np.asarray(syn_views).astype(str), np.asarray(real_views).astype(str)
    size = syn_images.shape[-1]
    blank = np.zeros((per_class, size, size), np.uint8)

    def tiles(images, views, c):
        idx = np.flatnonzero(views == c)[:per_class]
        out = blank.copy()
        out[:len(idx)] = images[idx]
        return make_grid(out, min(per_class, 8))

    rows = len(classes)
    fig, axes = plt.subplots(rows, 2, figsize=(10, 0.4 + 1.0 * rows * -(-per_class // 8)), squeeze=False)
    for r, c in enumerate(classes):
        acc = (scores or {}).get(c, {})
        for col, (images, views, label) in enumerate(((syn_images, syn_views, "synthetic"),
                                                      (real_images, real_views, "real"))):
            ax = axes[r, col]
            ax.imshow(tiles(images, views, c), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            key = "acc_syn" if label == "synthetic" else "acc_real"
            extra = f" · judge {acc[key]:.0%} {c}" if acc.get(key) is not None else ""
            ax.set_title(f"{c} {label}{extra}", fontsize=12)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
