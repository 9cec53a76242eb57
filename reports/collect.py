"""Read a study directory's files into plain Python data for the report (no training code).

Everything here tolerates absence: a stage that did not run, or a file a stage did not write,
gives None or an empty list, and the report says so instead of failing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def read_json_or_none(path: Path) -> Any:
    """JSON content, or None if the file is absent or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict]:
    """JSON lines (a torn last line is skipped), or [] if absent."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def finite(x: Any) -> float | None:
    """x as a float if it is a finite number, else None."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def gate_of(fid_json: dict | None) -> dict:
    """The quality-gate verdict evaluate/fidelity.py wrote into fidelity.json's `gate` ("unverified" without one).

    {"status": pass|fail|unverified, "checks": [{name, value, limit, ok, text}], "failed": [...], "summary",
    "thresholds"}: the verdict is made where the numbers are, under the thresholds that run was given.
    """
    if not fid_json:
        return {"status": "unverified", "checks": [], "failed": [], "summary": "no fidelity result: the set was never scored"}
    g = fid_json.get("gate")
    if not isinstance(g, dict) or g.get("status") not in ("pass", "fail", "unverified"):
        return {"status": "unverified", "checks": [], "failed": [],
                "summary": "its fidelity.json holds no quality-gate verdict (written by an older evaluate/fidelity.py): "
                           "re-run the fidelity stage to apply the gate"}
    return {"checks": [], "failed": [], "summary": "", **g}


@dataclass
class StageInfo:
    """One stage of study.json plus its run directory."""

    name: str
    experiment: str
    meta: dict
    status: str
    seconds: float | None
    run_dir: Path
    command: str
    deps: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status in ("done", "cached")


@dataclass
class Study:
    """A study directory, read."""

    dir: Path
    header: dict
    stages: list[StageInfo]

    def by_experiment(self, *experiments: str, done: bool = True) -> list[StageInfo]:
        """Stages of these experiments (finished ones only unless done=False)."""
        return [s for s in self.stages if s.experiment in experiments and (s.done or not done)]

    def get(self, name: str) -> StageInfo | None:
        """A stage by name, or None."""
        return next((s for s in self.stages if s.name == name), None)

    @property
    def config(self) -> dict:
        return self.header.get("config", {})

    @property
    def split_dir(self) -> Path:
        ds = self.config.get("dataset", {})
        return Path(ds["split_dir"]) if ds.get("split_dir") else self.dir / "data" / "split"


def _final_status(stage: dict) -> str:
    """The report stage is the one running while the report is built: it describes the state it leaves, done."""
    status = stage.get("status", "pending")
    return "done" if stage.get("experiment") == "report" and status == "running" else status


def load_study(study_dir: Path) -> Study:
    """Read STUDY/study.json (raises FileNotFoundError with advice if it is missing)."""
    study_dir = Path(study_dir)
    data = read_json_or_none(study_dir / "study.json")
    if data is None:
        raise FileNotFoundError(f"{study_dir / 'study.json'} not found or unreadable: is {study_dir} a study "
                                "directory written by pipelines/study.py?")
    stages = [StageInfo(name=s["name"], experiment=s.get("experiment", ""), meta=s.get("meta", {}),
                        status=_final_status(s), seconds=s.get("seconds"), run_dir=Path(s["run_dir"]),
                        command=s.get("command", ""), deps=s.get("deps", [])) for s in data.get("stages", [])]
    return Study(dir=study_dir, header=data, stages=stages)


# ----------------------------------------------------------------------------------------------
# Classifier runs


def metric_summary(run_dir: Path, eval_set: str, metric: str) -> tuple[float | None, float | None, int]:
    """(mean, sd, n) of a metric on an eval set from RUN/summary.json, else from the seed dirs."""
    summary = read_json_or_none(Path(run_dir) / "summary.json") or {}
    entry = (summary.get(eval_set) or summary.get("sets", {}).get(eval_set) or {}).get(metric)
    if isinstance(entry, dict) and finite(entry.get("mean")) is not None:
        return finite(entry.get("mean")), finite(entry.get("sd")), int(entry.get("n") or 1)
    values = [finite(m.get(eval_set, {}).get(metric)) for m in seed_metrics(run_dir)]
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values)


def seed_dirs(run_dir: Path) -> list[Path]:
    """RUN/seed-<s> directories, sorted by seed."""
    return sorted((p for p in Path(run_dir).glob("seed-*") if p.is_dir()),
                  key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else 0)


def seed_metrics(run_dir: Path) -> list[dict]:
    """metrics.json of every seed (per eval set)."""
    out = []
    for d in seed_dirs(run_dir):
        m = read_json_or_none(d / "metrics.json")
        if isinstance(m, dict):
            out.append(m)
    return out


def eval_sets(run_dir: Path) -> list[str]:
    """Eval set names of a classifier run (val first)."""
    sets: list[str] = []
    for m in seed_metrics(run_dir):
        for k, v in m.items():
            if isinstance(v, dict) and "macro_auprc" in v and k not in sets:
                sets.append(k)
    return sorted(sets, key=lambda s: (s != "val", s != "test", s))


def mean_confusion(run_dir: Path, eval_set: str) -> tuple[list[str], np.ndarray | None]:
    """Seed-averaged row-normalised confusion matrix (rows: true class) and its classes."""
    mats, classes = [], []
    for m in seed_metrics(run_dir):
        e = m.get(eval_set) or {}
        cm = e.get("confusion_normalized")
        if cm is None and e.get("confusion") is not None:
            raw = np.asarray(e["confusion"], dtype=float)
            cm = raw / np.maximum(raw.sum(axis=1, keepdims=True), 1)
        if cm is not None:
            mats.append(np.asarray(cm, dtype=float))
            classes = e.get("classes") or classes
    if not mats or any(x.shape != mats[0].shape for x in mats):
        return classes, None
    return list(classes), np.mean(mats, axis=0)


def per_class_recall(run_dir: Path, eval_set: str) -> dict[str, float]:
    """Seed-averaged recall (share correctly classified) per true class."""
    classes, cm = mean_confusion(run_dir, eval_set)
    if cm is None:
        return {}
    return {c: float(cm[i, i]) for i, c in enumerate(classes) if i < cm.shape[0]}


# ----------------------------------------------------------------------------------------------
# Images


def load_samples(samples_dir: Path, max_per_class: int = 8) -> tuple[list[str], dict[str, np.ndarray]]:
    """A few synthetic images per class from samples.npz: (classes, {class: (k,H,W) uint8})."""
    path = Path(samples_dir) / "samples.npz"
    if not path.is_file():
        return [], {}
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
            classes = [str(c) for c in z["classes"]] if "classes" in z.files else sorted({str(x) for x in labels})
    except (OSError, ValueError, KeyError):
        return [], {}
    images = _as_hw(images)
    out = {}
    for i, c in enumerate(classes):
        idx = np.flatnonzero(labels == i) if np.issubdtype(labels.dtype, np.integer) else np.flatnonzero(labels == c)
        if len(idx):
            out[c] = images[idx[:max_per_class]]
    return classes, out


def _as_hw(images: np.ndarray) -> np.ndarray:
    """(N,H,W) uint8 from (N,H,W), (N,1,H,W) or (N,H,W,1)."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] in (1, 3):
        images = images[:, 0]
    elif images.ndim == 4:
        images = images[..., 0]
    if images.dtype != np.uint8:
        images = np.clip(images, 0, 255).astype(np.uint8)
    return images


def load_real(manifest: Path, max_per_class: int = 8, by: str = "view") -> dict[str, np.ndarray]:
    """A few real images per class (or per source) from a manifest: {label: (k,H,W) uint8}."""
    import pandas as pd
    from PIL import Image

    try:
        df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except (OSError, ValueError):
        return {}
    out: dict[str, np.ndarray] = {}
    for label, group in df.groupby(by, sort=True):
        imgs = []
        for rel in group["path"].head(max_per_class):
            try:
                with Image.open(Path(manifest).parent / rel) as im:
                    imgs.append(np.asarray(im.convert("L"), dtype=np.uint8))
            except OSError:
                continue
        if imgs and all(i.shape == imgs[0].shape for i in imgs):
            out[str(label)] = np.stack(imgs)
    return out


def grid(images: np.ndarray, cols: int = 8, pad: int = 2) -> np.ndarray:
    """Tile (N,H,W) uint8 images into one image with `pad` black pixels between tiles."""
    n, h, w = images.shape
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    out = np.zeros((rows * (h + pad) - pad, cols * (w + pad) - pad), dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = im
    return out
