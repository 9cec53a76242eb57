"""Equal step budgets, precise BN and the classifier gate, on classify/train.py runs (CPU, 32 px, small_cnn).

A module phantom with a large test split (40% of the patients), so that the gate's interval is narrow
enough to tell a classifier that learned from one trained on shuffled labels.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from echosynth.classify.loop import make_budget
from echosynth.classify.settings import ClassifierTrainConfig
from echosynth.reports.classifier_gate import classifier_gate
from tests.conftest import PYTHON, run_cli

RUN = ["--config", "configs/classify/quick.yaml", "--arch", "small_cnn", "--threads", "1", "--workers", "1",
       "--progress", "false", "--global_batch", "32", "--checkpoint_every", "0"]


@pytest.fixture(scope="module")
def big_test_split(tmp_path_factory):
    """A 900-frame phantom split 50/10/40 by patient, with a 100-image training subset."""
    from echosynth.gen.data.build import build_phantom, build_splits

    root = tmp_path_factory.mktemp("budget")
    build_phantom(root / "phantom", n=900, size=32, seed=0, workers=1, progress=False)
    build_splits(root / "phantom" / "manifest.csv", root / "split", subsets=[100], seed=0, fractions=(0.5, 0.1, 0.4))
    return root / "split"


STEPS = 60


@pytest.fixture(scope="module")
def true_labels_run(big_test_split, tmp_path_factory):
    """small_cnn on the full training split, 2 seeds of STEPS steps."""
    out = tmp_path_factory.mktemp("true") / "run"
    _train(big_test_split, f"real:{big_test_split / 'train.csv'}", out, STEPS, "0,1", ["--precise_bn", "512"])
    return out


def _train(split, train_spec: str, out, steps: int, seeds: str = "0", extra=()) -> dict:
    run_cli([PYTHON, "classify/train.py", *RUN, "--train", train_spec, "--val", f"val={split / 'val.csv'}",
             "--test", f"test={split / 'test.csv'}", "--steps", str(steps), "--eval_every", str(max(1, steps // 2)),
             "--seeds", seeds, "--run_dir", str(out), *extra])
    return json.loads((out / "summary.json").read_text())


def test_budget_in_steps_ignores_the_set_size():
    cfg = ClassifierTrainConfig(train="x", val="y", steps=300, eval_every=40, global_batch=32)
    small, large = make_budget(cfg, 100), make_budget(cfg, 2000)
    assert small.steps == large.steps == 300 and small.rounds == large.rounds == 8  # 7 × 40 + 20
    assert (small.steps_per_epoch, large.steps_per_epoch) == (4, 63)
    assert small.epochs_at(300) == 75 and large.epochs_at(300) == pytest.approx(300 / 63, abs=1e-3)
    by_epochs = make_budget(ClassifierTrainConfig(train="x", val="y", epochs=3, global_batch=32), 100)
    assert (by_epochs.steps, by_epochs.eval_every, by_epochs.per_step_schedule) == (12, 4, False)


def test_two_training_sets_of_different_sizes_get_the_same_optimizer_steps(big_test_split, true_labels_run, tmp_path):
    split = big_test_split
    n_full = len(pd.read_csv(split / "train.csv"))
    assert n_full > 300
    small = _train(split, f"real:{split / 'train_100.csv'}", tmp_path / "small", STEPS, "0,1", ["--precise_bn", "512"])
    full = json.loads((true_labels_run / "summary.json").read_text())
    for summary, n in ((small, 100), (full, n_full)):
        t = summary["training"]
        assert t["optimizer_steps"] == {"0": STEPS, "1": STEPS} and t["images"] == n and t["budget"] == "steps"
        assert t["epochs"] == pytest.approx(STEPS / -(-n // 32), abs=1e-3)
        assert t["selected_on"] == "val"  # best checkpoint on validation: findings must use test
    for run in (tmp_path / "small", true_labels_run):
        stats = [json.loads(x) for x in (run / "seed-0" / "stats.jsonl").read_text().splitlines()]
        assert [r["step"] for r in stats] == [STEPS // 2, STEPS]
        assert json.loads((run / "seed-0" / "training.json").read_text())["optimizer_steps"] == STEPS


def test_precise_bn_recomputes_running_statistics_from_training_images():
    import torch

    from echosynth.classify.loop import precise_bn
    from echosynth.classify.models import build_classifier

    class Acc:  # the two members precise_bn uses
        device = torch.device("cpu")

        @staticmethod
        def autocast():
            return torch.autocast("cpu", enabled=False)

    torch.manual_seed(0)
    net = build_classifier("small_cnn", 4, 32)
    images = np.random.default_rng(0).integers(0, 256, (64, 32, 32), dtype=np.uint8)
    assert precise_bn(Acc, net, images, 64, 64, False, 0, 0) == 64
    first = net.body[1]
    x = torch.from_numpy(images).float().div(127.5).sub(1).unsqueeze(1)
    with torch.no_grad():
        h = net.body[0](x)  # the first conv's output over all 64 images (one batch)
    assert torch.allclose(first.running_mean, h.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(first.running_var, h.var((0, 2, 3), unbiased=True), rtol=1e-4)
    assert first.momentum == 0.1 and net.training  # restored


def test_classifier_gate_flags_shuffled_labels_not_true_labels(big_test_split, true_labels_run, tmp_path):
    split = big_test_split
    train = pd.read_csv(split / "train.csv", dtype=str, keep_default_na=False)
    shuffled = train.copy()
    shuffled["view"] = np.random.default_rng(0).permutation(train["view"].to_numpy())
    shuffled.to_csv(split / "train_shuffled.csv", index=False)
    _train(split, f"real:{split / 'train_shuffled.csv'}", tmp_path / "shuffled", STEPS, "0,1", ["--precise_bn", "512"])
    good, bad = classifier_gate(true_labels_run), classifier_gate(tmp_path / "shuffled")
    assert good["eval_set"] == bad["eval_set"] == "test"  # validation selected the checkpoints
    assert good["status"] == "learned" and good["ci"][0] > 0.25, good["summary"]
    assert bad["status"] == "did not learn", bad["summary"]


def test_a_step_budget_run_resumes_to_the_uninterrupted_weights(big_test_split, tmp_path):
    """SIGINT after the first validation round of a --steps run, then --resume latest: the same weights."""
    import shlex

    from safetensors.torch import load_file

    from tests.conftest import interrupt_after_first_stats

    split = big_test_split
    args = [*RUN, "--train", f"upsampled:{split / 'train_100.csv'}", "--val", f"val={split / 'val.csv'}",
            "--steps", "48", "--eval_every", "6", "--precise_bn", "64", "--seeds", "0"]
    run_cli([PYTHON, "classify/train.py", *args, "--run_dir", str(tmp_path / "full")])
    cut = tmp_path / "cut"
    stats = cut / "seed-0" / "stats.jsonl"
    code, err = interrupt_after_first_stats([PYTHON, "classify/train.py", *args, "--run_dir", str(cut), "--checkpoint_every", "1"],
                                            stats, env={"OMP_NUM_THREADS": "1"})
    assert code == 130, err
    line = next(x for x in err.splitlines() if "continue with:" in x)
    assert "stopped in seed 0 view step" in line
    run_cli([PYTHON, *shlex.split(line.split("continue with: ")[1])[1:]])
    for name in ("last", "best"):
        a = load_file(str(tmp_path / "full" / "seed-0" / "checkpoints" / f"{name}.safetensors"))
        b = load_file(str(cut / "seed-0" / "checkpoints" / f"{name}.safetensors"))
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), name
    rows = [json.loads(x) for x in stats.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(6, 49, 6))
