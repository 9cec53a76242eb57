"""Image-quality grading (CACTUS): a 0–10 grade regression head on the view classifier's encoder.

Two schemes (config `quality.scheme`):
- `transfer`: train encoder + view head, then freeze the encoder (BatchNorm statistics too) and
  train only the grade head on its penultimate features (CACTUS's better scheme);
- `multitask`: one joint loss, cross-entropy + `grade_weight` · MSE(grade / 10), for all epochs.
Rows without a grade (empty `quality`, synthetic or SMOTE images) add nothing to the grade loss.
"""

from __future__ import annotations

import numpy as np
import torch

from echosynth.gen.data.image_sets import ImageSet


def grade_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE on grade/10 over rows whose target grade is known (NaN = unknown); 0 if none is."""
    known = ~torch.isnan(target)
    if not known.any():
        return pred.sum() * 0.0  # keeps the graph (DDP expects every head to get a gradient)
    return torch.mean((pred.float()[known] / 10 - target[known] / 10) ** 2)


def init_grade_head(model, grades: np.ndarray) -> None:
    """Start the grade head as the mean-grade predictor: zero weights, bias = mean training grade.

    A random head on trained features (magnitudes of several units over 512+ dimensions) starts
    with grade errors of ±20, and from bias 0 a linear head needs hundreds of steps to reach ~7.
    """
    known = np.asarray(grades, dtype=float)
    known = known[~np.isnan(known)]
    with torch.no_grad():
        model.grade_head.weight.zero_()
        model.grade_head.bias.fill_(float(known.mean()) / 10 if len(known) else 0.5)


def check_grades(s: ImageSet, what: str) -> None:
    """Raise unless the set carries some 0–10 grades (the manifest's `quality` column)."""
    if np.isnan(np.asarray(s.quality, dtype=float)).all():
        raise ValueError(f"{what} {s.name!r} has no quality grades: its manifest's `quality` column is empty; "
                         "a quality grader needs graded images (the phantom carries them)")
