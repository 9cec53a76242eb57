"""classify/train.py and classify/predict.py end to end on phantom images (CPU, 32 px)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score, balanced_accuracy_score, f1_score

from echosynth.classify.models import load_classifier
from tests.conftest import PYTHON, accelerate_cmd, run_cli

# ResNet18 at 32 px, 8 epochs of batch 16 on the 203 phantom training images (an epoch budget, the best
# checkpoint on validation: the quick preset's step budget is tested in test_classify_budget.py); one
# torch thread keeps it quick and steady on a busy 2-core machine.
TINY = ["--config", "configs/classify/quick.yaml", "--arch", "resnet18", "--steps", "0", "--epochs", "8",
        "--global_batch", "16", "--precise_bn", "0", "--checkpoint", "best", "--threads", "1", "--progress", "false"]
SEED_FILES = ("config.json", "provenance.json", "model.json", "checkpoints/best.safetensors",
              "checkpoints/last.safetensors", "metrics.json", "stats.jsonl")


@pytest.fixture(scope="module")
def trained_run(split_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("classify-runs")
    proc = run_cli([PYTHON, "classify/train.py", *TINY, "--train", f"real:{split_dir / 'train.csv'}",
                    "--val", str(split_dir / "val.csv"),
                    "--test", f"{split_dir / 'test.csv'},domain_shift={split_dir / 'shift.csv'}", "--out", str(out)])
    runs = list(out.iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("00000-classify-resnet18"), proc.stdout
    return runs[0]


def test_run_directory_contract(trained_run):
    seed = trained_run / "seed-0"
    for f in SEED_FILES:
        assert (seed / f).is_file(), f
    for name in ("val", "test", "domain_shift"):
        assert (seed / f"predictions_{name}.csv").is_file() and (seed / f"confusion_{name}.png").is_file()
    info = json.loads((seed / "model.json").read_text())
    assert {k: info[k] for k in ("arch", "num_classes", "image_size", "in_channels", "heads")} == {
        "arch": "resnet18", "num_classes": 4, "image_size": 32, "in_channels": 1, "heads": ["view"]}
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["val"]["macro_auprc"]["n"] == 1 and set(summary) == {"val", "test", "domain_shift", "training"}
    t = summary["training"]
    assert t["optimizer_steps"] == {"0": 8 * -(-t["images"] // 16)} and t["epochs"] == 8 and t["budget"] == "epochs"
    assert t["selected_on"] == "val" and t["checkpoint"] == "best"
    stats = [json.loads(line) for line in (seed / "stats.jsonl").read_text().splitlines()]
    assert len(stats) == 8 and stats[-1]["loss"] < stats[0]["loss"]


def test_beats_chance_on_validation(trained_run):
    m = json.loads((trained_run / "seed-0" / "metrics.json").read_text())["val"]
    # Chance: balanced accuracy 0.25, macro AUPRC = mean class prevalence = 0.25.
    assert m["balanced_accuracy"] > 0.4 and m["macro_auprc"] > 0.5, m


def test_metrics_match_sklearn_on_saved_predictions(trained_run):
    seed = trained_run / "seed-0"
    metrics = json.loads((seed / "metrics.json").read_text())
    for name in ("val", "test", "domain_shift"):
        df = pd.read_csv(seed / f"predictions_{name}.csv")
        classes = metrics[name]["classes"]
        probs = df[[f"prob_{c}" for c in classes]].to_numpy()
        y = df["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
        present = sorted(set(y))
        pred = df["pred"].map({c: i for i, c in enumerate(classes)}).to_numpy()
        assert (pred == probs.argmax(1)).all()
        auprc = average_precision_score(np.eye(4)[y][:, present], probs[:, present], average="macro")
        assert metrics[name]["macro_auprc"] == pytest.approx(auprc, abs=1e-4)
        assert metrics[name]["macro_f1"] == pytest.approx(f1_score(y, pred, labels=present, average="macro"))
        assert metrics[name]["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    # The domain-shift set holds 3 of the 4 views: flagged and scored on those 3.
    assert metrics["domain_shift"]["subset_of_training_classes"] and not metrics["val"]["subset_of_training_classes"]
    assert metrics["domain_shift"]["per_class"]["PSAX"]["support"] == 0


def test_load_classifier_features_and_predict_cli(trained_run, split_dir, phantom_dir, tmp_path, capsys):
    model, info = load_classifier(trained_run)
    x = torch.zeros(3, 1, info["image_size"], info["image_size"])
    with torch.no_grad():
        assert model.features(x).shape == (3, 512) and model(x).shape == (3, 4)
    out = tmp_path / "pred.csv"
    run_cli([PYTHON, "classify/predict.py", "--model", str(trained_run / "seed-0"), "--images",
             str(split_dir / "val.csv"), "--out", str(out)])
    df = pd.read_csv(out)
    saved = pd.read_csv(trained_run / "seed-0" / "predictions_val.csv")
    assert len(df) == len(saved) and (df["view"].to_numpy() == saved["pred"].to_numpy()).all()
    assert np.allclose(df["prob_A4C"], saved["prob_A4C"], atol=1e-4)  # same preprocessing as training
    from echosynth.classify.predict import main as predict_main

    predict_main(["--model", str(trained_run), "--images", str(phantom_dir / "images" / "camus")])  # a folder, printed as a table
    printed = capsys.readouterr().out
    assert "prob_PSAX" in printed and len(printed.splitlines()) > 5


def test_two_process_training_with_seeds_and_run_dir(split_dir, tmp_path):
    run = tmp_path / "study" / "view-real"
    args = [*TINY, "--epochs", "1", "--seeds", "0,1", "--arch", "madani", "--train",
            f"upsampled:{split_dir / 'train_60.csv'}", "--val", str(split_dir / "val.csv"), "--run_dir", str(run)]
    run_cli([*accelerate_cmd("classify/train.py", 2), *args])
    for s in (0, 1):
        for f in SEED_FILES:
            assert (run / f"seed-{s}" / f).is_file(), f
        assert json.loads((run / f"seed-{s}" / "provenance.json").read_text())["world_size"] == 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val"]["macro_auprc"]["n"] == 2
    vals = summary["val"]["macro_auprc"]["values"]
    assert summary["val"]["macro_auprc"]["sd"] == pytest.approx(float(np.std(vals, ddof=1)))
    data = json.loads((run / "data.json").read_text())
    assert len(set(data["train"]["class_counts"].values())) == 1  # upsampled to the majority count
    again = run_cli([PYTHON, "classify/train.py", *args], check=False)
    assert again.returncode != 0 and "--overwrite" in again.stderr


def test_clear_cli_errors(split_dir, capsys):
    from echosynth.classify.train import main

    with pytest.raises(SystemExit) as e:
        main(["--arch", "vgg19", "--train", "x.csv", "--val", "y.csv"])
    assert e.value.code == 2 and "vgg19" in capsys.readouterr().err
    assert main(["--train", f"mixed:{split_dir / 'train.csv'}", "--val", str(split_dir / "val.csv")]) == 1
    assert "classify/train.py: error: " in (err := capsys.readouterr().err) and "mixed needs REAL+SYNTH@FRACTION" in err
    with pytest.raises(SystemExit):
        main(["--image_size", "16", "--train", "x.csv", "--val", "y.csv"])
    assert "image_size: 16 is below the minimum 32" in capsys.readouterr().err
    assert main(["--train", str(split_dir / "nope.csv"), "--val", str(split_dir / "val.csv")]) == 1
    assert "manifest not found" in capsys.readouterr().err
