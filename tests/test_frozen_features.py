"""Frozen FID-Inception baseline (cache, head-only checkpoints) and InceptionV3 through classify/train.py, with TensorBoard."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import PYTHON, run_cli
from echosynth.classify.models import build_classifier, load_classifier
from echosynth.classify.settings import ClassifierTrainConfig
from echosynth.gen.core.checkpoint import count_parameters
from echosynth.gen.core.config import ConfigError, build

# The FID Inception costs ~0.2-0.7 s per image on one busy CPU thread: a few dozen images only.
PER_CLASS = {"train": 5, "val": 2, "test": 2}


@pytest.fixture(scope="module")
def tiny_split(split_dir, phantom_dir, tmp_path_factory):
    """train/val/test manifests with a handful of images per view, pointing at the phantom images."""
    from echosynth.gen.data.manifest import write_data_roots

    out = tmp_path_factory.mktemp("tiny-split")
    for name, k in PER_CLASS.items():
        df = pd.read_csv(split_dir / f"{name}.csv")
        df = df.groupby("view", group_keys=False).head(k).reset_index(drop=True)
        df["path"] = [os.path.relpath((split_dir / p).resolve(), out) for p in df["path"]]
        df.to_csv(out / f"{name}.csv", index=False)
    write_data_roots(out, [phantom_dir])
    return out


@pytest.fixture(scope="module")
def frozen(one_torch_thread):
    torch.manual_seed(0)
    return build_classifier("fid_inception_frozen", 4, 32)


def test_only_the_head_is_trained_and_saved(frozen):
    # The backbone's ~21.8 M parameters are neither parameters nor state of the classifier.
    assert count_parameters(frozen) == 2048 * 4 + 4
    assert set(frozen.state_dict()) == {"norm.running_mean", "norm.running_var", "norm.num_batches_tracked",
                                        "head.weight", "head.bias"}
    mlp = build_classifier("fid_inception_frozen_mlp", 4, 32)
    assert count_parameters(mlp) == 2048 * 512 + 512 + 512 * 4 + 4 and mlp.feature_dim == 512
    assert mlp.cache is frozen.cache  # one cache per backbone in the process


def test_features_are_the_fid_inception_pool_features_and_cached(frozen):
    from echosynth.evaluate.features import InceptionExtractor

    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 1, 32, 32, generator=g) * 2 - 1
    before = frozen.cache.misses
    with torch.no_grad():
        f = frozen.backbone_features(x)
        ref = InceptionExtractor()(x)
    torch.testing.assert_close(f, ref, rtol=1e-5, atol=1e-5)
    assert frozen.cache.misses == before + 3
    # The same images again: no backbone pass (it would fail now), identical features.
    backbone = frozen.backbone
    object.__setattr__(frozen, "backbone", None)
    try:
        hits = frozen.cache.hits
        with torch.no_grad():
            again = frozen.backbone_features(x[[2, 0]])
        assert frozen.cache.hits == hits + 2 and torch.equal(again, f[[2, 0]])
    finally:
        object.__setattr__(frozen, "backbone", backbone)
    # A changed pixel is a new image.
    y = x.clone()
    y[0, 0, 0, 0] += 0.01
    with torch.no_grad():
        frozen.backbone_features(y[:1])
    assert frozen.cache.misses == before + 4


def test_gradients_reach_the_head_only(frozen):
    frozen.train()
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    loss = torch.nn.functional.cross_entropy(frozen(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert frozen.head.weight.grad is not None and frozen.head.weight.grad.abs().sum() > 0
    frozen.zero_grad()
    frozen.eval()


def test_config_refusals():
    base = {"train": "real:x.csv", "val": "y.csv"}
    with pytest.raises(ConfigError, match="without --augment.enabled"):
        build(ClassifierTrainConfig, overrides={**base, "arch": "fid_inception_frozen", "augment.enabled": True})
    with pytest.raises(ConfigError, match="too small for inception_v3: use at least 75 px"):
        build(ClassifierTrainConfig, overrides={**base, "arch": "inception_v3", "image_size": 64})


def _classify(tiny_split, out, *extra):
    return run_cli([PYTHON, "classify/train.py", "--config", "configs/classify/quick.yaml", "--threads", "1",
                    "--progress", "false", "--train", f"real:{tiny_split / 'train.csv'}",
                    "--val", str(tiny_split / "val.csv"), "--test", str(tiny_split / "test.csv"),
                    "--global_batch", "10", "--out", str(out), *extra], env={"OMP_NUM_THREADS": "1"})


def test_frozen_baseline_trains_through_classify_train(tiny_split, tmp_path):
    _classify(tiny_split, tmp_path, "--arch", "fid_inception_frozen", "--epochs", "4", "--optimizer", "adam",
              "--lr", "0.01", "--schedule", "none")
    (run,) = list(tmp_path.iterdir())
    assert run.name.endswith("classify-fid_inception_frozen-view-real")
    assert json.loads((run / "config.json").read_text())["arch"] == "fid_inception_frozen"
    seed = run / "seed-0"
    assert json.loads((seed / "model.json").read_text())["arch"] == "fid_inception_frozen"
    assert (seed / "checkpoints" / "best.safetensors").stat().st_size < 100_000  # the head only
    stats = [json.loads(line) for line in (seed / "stats.jsonl").read_text().splitlines()]
    assert len(stats) == 4
    # Epoch 1 ran the backbone over the training images; later epochs cost only the head.
    assert stats[1]["train_seconds"] < 0.5 * stats[0]["train_seconds"], stats
    assert stats[-1]["loss"] < stats[0]["loss"]
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary) == {"val", "test", "training"} and summary["training"]["budget"] == "epochs"
    model, info = load_classifier(run)
    assert info["arch"] == "fid_inception_frozen"
    with torch.no_grad():
        p = torch.softmax(model(torch.zeros(2, 1, 32, 32)), 1)
    assert np.allclose(p.sum(1).numpy(), 1.0)


def test_inception_v3_aux_trains_through_classify_train_with_tensorboard(tiny_split, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _classify(tiny_split, tmp_path, "--arch", "inception_v3_aux", "--image_size", "107", "--epochs", "2",
              "--log_with", "tensorboard")
    (run,) = list(tmp_path.iterdir())
    seed = run / "seed-0"
    assert json.loads((seed / "model.json").read_text())["arch"] == "inception_v3_aux"
    stats = [json.loads(line) for line in (seed / "stats.jsonl").read_text().splitlines()]
    ea = EventAccumulator(str(run / "tracking" / run.name), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    tags = ea.Tags()
    loss = {e.step: e.value for e in ea.Scalars("seed-0/view/loss")}
    assert loss == pytest.approx({r["epoch"]: r["loss"] for r in stats}, rel=1e-6)
    assert {"seed-0/view/lr", "seed-0/view/images_per_s", "seed-0/view/val_macro_auprc",
            "seed-0/test/macro_auprc"} <= set(tags["scalars"])
    assert {"seed-0/confusion/val", "seed-0/confusion/test"} <= set(tags["images"])
    (text,) = [e for e in ea.Tensors("seed-0/confusion/test/text_summary")]
    table = text.tensor_proto.string_val[0].decode()
    assert table.startswith("| true \\ predicted | A2C | A4C | PLAX | PSAX |")
    metrics = json.loads((seed / "metrics.json").read_text())["test"]
    assert sum(int(v) for line in table.splitlines()[2:] for v in line.split("|")[2:-1]) == sum(map(sum, metrics["confusion"]))
