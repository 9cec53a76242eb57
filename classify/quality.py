"""Image-quality grading (CACTUS): a 0–10 grade regression head on the view classifier's encoder.

Two schemes (config `quality.scheme`):
- `transfer`: train encoder + view head, then freeze the encoder (BatchNorm statistics too) and
  train only the grade head on its penultimate features (CACTUS's better scheme);
- `multitask`: one joint loss, cross-entropy + `grade_weight` · MSE(grade / 10), for all epochs.
Rows without a grade (empty `quality`, synthetic or SMOTE images) add nothing to the grade loss.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from classify.datasets import ImageSet


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


def train_grade_head(accelerator, cfg, seed_dir: Path, train: ImageSet, val: ImageSet, seed: int) -> dict:
    """Transfer scheme, phase 2: reload the best view model, freeze its encoder, train the grade head."""
    from classify.models import load_classifier
    from classify.training import run_epochs

    net, _ = load_classifier(seed_dir, "best", device=accelerator.device)
    for p in net.encoder_parameters():
        p.requires_grad_(False)
    for p in net.head.parameters():
        p.requires_grad_(False)
    quality = torch.tensor(train.quality, dtype=torch.float32)

    def grade_step(head, x, idx):
        with torch.no_grad():
            f = net.features(x)
        return grade_loss(head(f.float()).squeeze(1) * 10.0, quality[idx].to(x.device))

    opt = torch.optim.Adam(net.grade_head.parameters(), lr=cfg.quality.grade_lr)
    return run_epochs(accelerator, cfg, net, net.grade_head, opt, train, val, seed, seed_dir, cfg.quality.grade_epochs,
                      grade_step, "grade", "grade_mse", with_grade=True)
