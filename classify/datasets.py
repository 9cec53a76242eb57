"""Classifier training sets, built by a SPEC string from the data layer's image sets (gen/data/image_sets.py).

The SPEC grammar is `echosynth.classify.settings.SPEC_DOC` (shown by `classify/train.py --help`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from echosynth.gen.data.image_sets import ImageSet, ManifestRef, load_image_set

KINDS = ("real", "synthetic", "mixed", "upsampled", "smote")


class SpecError(ValueError):
    """A malformed training-set SPEC; the message shows the grammar."""


SPEC_HELP = ("SPEC is [KIND:]MANIFEST[#split=..,subset=..][@ARG] with KIND one of real, synthetic "
             "(@N per class), mixed (REAL+SYNTH@fraction), upsampled (@majority|@N), smote (@majority|@N)")


# ----------------------------------------------------------------------------------------------
# Parsing


def _source(text: str, spec: str) -> ManifestRef:
    """`path.csv[#split=train,subset=1000]` of a SPEC → ManifestRef (SpecError with the grammar)."""
    try:
        return ManifestRef.parse(text)
    except ValueError as e:
        raise SpecError(f"{spec!r}: {e}. {SPEC_HELP}") from None


@dataclass(frozen=True)
class Spec:
    """A parsed training-set SPEC."""

    kind: str
    sources: tuple[ManifestRef, ...]
    arg: str | None = None


def parse_spec(spec: str) -> Spec:
    """Parse a SPEC string (see the module docstring) and check its argument."""
    text = spec.strip()
    kind, sep, rest = text.partition(":")
    if not sep or kind not in KINDS:
        kind, rest = "real", text  # a bare manifest path
    body, _, arg = rest.rpartition("@") if "@" in rest else (rest, "", "")
    arg = arg or None
    parts = body.split("+")
    if kind == "mixed":
        if len(parts) != 2 or arg is None:
            raise SpecError(f"{spec!r}: mixed needs REAL+SYNTH@FRACTION, e.g. mixed:train_1000.csv+synth.csv@0.3")
        try:
            f = float(arg)
        except ValueError:
            raise SpecError(f"{spec!r}: the mixing fraction {arg!r} is not a number") from None
        if not 0 < f <= 10:
            raise SpecError(f"{spec!r}: the mixing fraction must be in (0, 10], got {f}")
    elif len(parts) != 1:
        raise SpecError(f"{spec!r}: only mixed takes two manifests (REAL+SYNTH). {SPEC_HELP}")
    if kind == "real" and arg is not None:
        raise SpecError(f"{spec!r}: real takes no @ARG. {SPEC_HELP}")
    positive = arg is not None and arg.isdigit() and int(arg) >= 1
    if kind in ("upsampled", "smote") and arg not in (None, "majority") and not positive:
        raise SpecError(f"{spec!r}: {kind} takes @majority or @N (images per class), got @{arg}")
    if kind == "synthetic" and arg is not None and not positive:
        raise SpecError(f"{spec!r}: synthetic takes @N (images kept per class), got @{arg}")
    return Spec(kind, tuple(_source(p, spec) for p in parts), arg)


def _rng(seed: int, *keys: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def parse_eval_arg(text: str) -> tuple[str, Path]:
    """`name=PATH` or `PATH` (name = the file stem) → (name, path)."""
    name, eq, path = text.partition("=")
    if eq and name and "/" not in name:
        return name, Path(path)
    return Path(text).stem, Path(text)


# ----------------------------------------------------------------------------------------------
# Builders


def _check_classes(s: ImageSet, spec: str, allow_empty: bool) -> None:
    counts = s.class_counts()
    empty = [c for c, n in counts.items() if n == 0]
    if empty and not allow_empty:
        raise ValueError(f"training set {spec!r} has no images of class(es) {empty} (counts: {counts}); "
                         "add images of them, drop them from `classes`, or pass --allow_empty_classes true")


def _per_class_draw(s: ImageSet, per_class: dict[int, int], rng: np.random.Generator, replace: bool) -> np.ndarray:
    out = []
    for c, n in per_class.items():
        idx = np.flatnonzero(s.labels == c)
        if n > len(idx) and not replace:
            raise ValueError(f"{s.name}: needs {n} images of {s.classes[c]} but has only {len(idx)}")
        out.append(rng.choice(idx, size=n, replace=replace))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _targets(s: ImageSet, arg: str | None) -> dict[int, int]:
    """Per-class target counts for oversampling: the majority count or N (never below the count)."""
    counts = np.bincount(s.labels, minlength=len(s.classes))
    goal = int(counts.max()) if arg in (None, "majority") else int(arg)
    return {c: max(goal, int(counts[c])) for c in s.present_classes()}


def upsample(s: ImageSet, arg: str | None, seed: int) -> ImageSet:
    """Random oversampling: keep every image and add random repeats up to the per-class target."""
    rng = _rng(seed, "upsample")
    counts = np.bincount(s.labels, minlength=len(s.classes))
    extra = {c: t - int(counts[c]) for c, t in _targets(s, arg).items()}
    idx = np.concatenate([np.arange(len(s)), _per_class_draw(s, extra, rng, replace=True)])
    return s.take(idx, f"upsampled-{s.name}")


def smote(s: ImageSet, arg: str | None, seed: int, k_neighbors: int = 5) -> ImageSet:
    """SMOTE (Chawla et al. 2002) on flattened pixels: new images on lines between class neighbours."""
    from imblearn.over_sampling import SMOTE

    counts = np.bincount(s.labels, minlength=len(s.classes))
    present = s.present_classes()
    smallest = min(int(counts[c]) for c in present)
    if smallest < 2:
        raise ValueError(f"{s.name}: SMOTE needs at least 2 images per class; counts {s.class_counts()}")
    k = min(k_neighbors, smallest - 1)
    sampler = SMOTE(sampling_strategy=_targets(s, arg), k_neighbors=k, random_state=seed)
    n, h, w = s.images.shape
    x, y = sampler.fit_resample(s.images.reshape(n, -1).astype(np.float32), s.labels)
    new = slice(n, len(y))  # imbalanced-learn appends the new samples after the originals
    made = ImageSet(f"smote-{s.name}", np.clip(np.rint(x[new]), 0, 255).astype(np.uint8).reshape(-1, h, w),
                    y[new].astype(np.int64), s.classes, paths=np.array([f"smote:{i}" for i in range(len(y) - n)], dtype=object),
                    sources=np.full(len(y) - n, "smote", dtype=object),
                    patient_ids=np.full(len(y) - n, "smote", dtype=object), quality=np.full(len(y) - n, np.nan))
    if s.video_ids is not None:
        made.video_ids = np.full(len(made), "", dtype=object)
    out = ImageSet.concat(f"smote-{s.name}", [s, made])
    out.info["smote_k_neighbors"] = k
    return out


def mix(real: ImageSet, synth: ImageSet, fraction: float, seed: int) -> ImageSet:
    """Real set plus round(fraction·|real|) synthetic images, spread evenly over the synthetic classes."""
    total = int(round(fraction * len(real)))
    present = synth.present_classes()
    if not present:
        raise ValueError(f"{synth.name}: the synthetic manifest is empty")
    rng = _rng(seed, "mix")
    base, rem = divmod(total, len(present))
    lucky = set(rng.permutation(present)[:rem].tolist())  # the remainder goes to random classes
    per_class = {c: base + (c in lucky) for c in present}
    picked = synth.take(_per_class_draw(synth, per_class, rng, replace=False))
    out = ImageSet.concat(f"mixed-{real.name}+{synth.name}", [real, picked])
    out.info.update(n_real=len(real), n_synthetic=len(picked))
    return out


def build_training_set(spec: str, classes: list[str], size: int, seed: int = 0,
                       allow_empty_classes: bool = False, workers: int = 4) -> ImageSet:
    """Load and build the training set that `spec` describes (see the module docstring)."""
    p = parse_spec(spec)
    first = load_image_set(p.sources[0], classes, size, workers=workers)
    if p.kind == "real":
        out = first
    elif p.kind == "synthetic":
        out = first
        if p.arg is not None:
            counts = first.class_counts()
            n = int(p.arg)
            out = first.take(_per_class_draw(first, {c: n for c in first.present_classes()}, _rng(seed, "synth"),
                                             replace=False))
            out.info["per_class_from"] = counts
    elif p.kind == "mixed":
        synth = load_image_set(p.sources[1], classes, size, workers=workers)
        out = mix(first, synth, float(p.arg), seed)
    elif p.kind == "upsampled":
        _check_classes(first, spec, allow_empty_classes)
        out = upsample(first, p.arg, seed)
    else:
        _check_classes(first, spec, allow_empty_classes)
        out = smote(first, p.arg, seed)
    _check_classes(out, spec, allow_empty_classes)
    out.name = spec
    out.info.update(spec=spec, kind=p.kind, n=len(out), class_counts=out.class_counts(),
                    sources={str(k): int(v) for k, v in zip(*np.unique(out.sources, return_counts=True))})
    return out


def check_no_leakage(train: ImageSet, evals: dict[str, ImageSet]) -> None:
    """Raise if a training patient (synthetic/SMOTE rows aside) also appears in an evaluation set."""
    own = {p for p, s in zip(train.patient_ids, train.sources) if s not in ("synthetic", "smote") and p}
    for name, ev in evals.items():
        shared = own & set(ev.patient_ids.tolist())
        if shared:
            raise ValueError(f"patient leakage: {len(shared)} patient(s) of the training set are also in evaluation "
                             f"set {name!r} (e.g. {sorted(shared)[:3]}); use patient-level splits from "
                             "`gen/prepare.py split`")


# ----------------------------------------------------------------------------------------------
# Class balance for the loss / sampler


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse-frequency weights N / (K·n_c) over present classes (0 for absent ones)."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    k = (counts > 0).sum()
    return np.where(counts > 0, len(labels) / (k * np.maximum(counts, 1)), 0.0)


def balanced_indices(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n indices drawn with replacement so that every present class is equally likely."""
    w = class_weights(labels, int(labels.max()) + 1)[labels]
    return rng.choice(len(labels), size=n, replace=True, p=w / w.sum())
