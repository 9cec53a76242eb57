"""Quality grading (CACTUS): masked grade loss, transfer and multi-task training on phantom grades."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

from echosynth.classify.models import build_classifier, load_classifier
from echosynth.classify.quality import grade_loss
from tests.conftest import PYTHON, run_cli

GRADER = ["--config", "configs/classify/quick.yaml", "--task", "quality", "--arch", "madani", "--threads", "1",
          "--progress", "false"]


def test_grade_loss_masks_unknown_grades():
    pred = torch.tensor([5.0, 7.0, 2.0], requires_grad=True)
    target = torch.tensor([4.0, float("nan"), 2.0])
    loss = grade_loss(pred, target)
    assert loss.item() == pytest.approx(((0.5 - 0.4) ** 2 + 0) / 2)
    loss.backward()
    assert pred.grad[1] == 0 and pred.grad[0] > 0
    empty = grade_loss(pred, torch.full((3,), float("nan")))
    assert empty.item() == 0 and empty.requires_grad


def test_grade_head_on_frozen_features_learns():
    # The transfer scheme's second phase in miniature: a linear grade head on fixed features.
    torch.manual_seed(0)
    model = build_classifier("madani", 4, 32, grade_head=True).eval()
    x = torch.rand(64, 1, 32, 32) * 2 - 1
    target = (x.mean((1, 2, 3)) + 1) * 5  # a grade the features can explain
    with torch.no_grad():
        f = model.features(x)
    opt = torch.optim.Adam(model.grade_head.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = grade_loss(model.grade(f), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("scheme", ["transfer", "multitask"])
def test_grader_training_end_to_end(split_dir, tmp_path, scheme):
    run = tmp_path / scheme
    extra = ["--epochs", "2", "--quality.grade_epochs", "4"] if scheme == "transfer" else ["--epochs", "4"]
    run_cli([PYTHON, "classify/train.py", *GRADER, *extra, "--quality.scheme", scheme,
             "--select_metric", "grade_mse", "--train", f"real:{split_dir / 'train_120.csv'}",
             "--val", str(split_dir / "val.csv"), "--test", str(split_dir / "test.csv"), "--run_dir", str(run)])
    seed = run / "seed-0"
    stats = [json.loads(line) for line in (seed / "stats.jsonl").read_text().splitlines()]
    phase = "grade" if scheme == "transfer" else "view"
    losses = [s["loss"] for s in stats if s["phase"] == phase]
    assert len(losses) == 4 and losses[-1] < losses[0], losses  # the grading loss goes down
    if scheme == "transfer":
        assert [s["phase"] for s in stats] == ["view"] * 2 + ["grade"] * 4
    m = json.loads((seed / "metrics.json").read_text())["test"]
    df = pd.read_csv(seed / "predictions_test.csv")
    assert m["grade_mse"] == pytest.approx(np.mean((df["grade"] - df["quality"]) ** 2), rel=1e-4)
    assert m["grade_spearman"] == pytest.approx(spearmanr(df["grade"], df["quality"]).statistic, abs=5e-3)
    model, info = load_classifier(run)
    assert info["heads"] == ["view", "grade"] and model.grade_head is not None
    if scheme == "transfer":
        # Frozen encoder: the view head and encoder of the best checkpoint are the phase-1 ones.
        from safetensors.torch import load_file

        last, best = load_file(str(seed / "checkpoints" / "last.safetensors")), load_file(str(seed / "checkpoints" / "best.safetensors"))
        assert all(torch.equal(best[k], last[k]) for k in best if not k.startswith("grade_head"))


def test_grader_needs_grades(split_dir, tmp_path, capsys):
    from echosynth.classify.train import main
    from echosynth.gen.data.manifest import write_manifest

    df = pd.read_csv(split_dir / "train_60.csv", dtype=str, keep_default_na=False)
    df["quality"] = ""
    df["path"] = [str((split_dir / p).resolve()) for p in df["path"]]
    write_manifest(df, tmp_path / "ungraded.csv")
    (tmp_path / "data_roots.json").write_text('{"allow_outside": true}')  # absolute paths on purpose
    assert main([*GRADER, "--train", str(tmp_path / "ungraded.csv"), "--val", str(split_dir / "val.csv")]) == 1
    assert "no quality grades" in capsys.readouterr().err
