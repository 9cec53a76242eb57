"""evaluate/privacy.py: planted copies are found, held-out images are not, the filter and the membership attack work."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.ndimage import shift as nd_shift

from echosynth.evaluate.copy_detection import (
    calibrate,
    carlini_ratio,
    flag,
    nndr,
    tolerant_distance,
)
from echosynth.evaluate.membership import loss_threshold_attack, roc_summary
from echosynth.evaluate.privacy import audit
from echosynth.evaluate.privacy import main as privacy_main
from echosynth.gen.data.image_sets import ImageSet, load_image_set, write_sample_dir
from echosynth.gen.data.manifest import read_manifest
from tests.standin import make_standin_classifier, make_standin_diffusion_run

CLASSES = ["A2C", "A4C", "PLAX", "PSAX"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A larger phantom (1,000 frames at 32 px, split by patient) so that calibration sets have ~100 images."""
    from echosynth.gen.data.build import build_phantom, build_splits

    root = tmp_path_factory.mktemp("privacy")
    build_phantom(root / "phantom", n=1000, size=32, seed=3, workers=1, progress=False)
    build_splits(root / "phantom" / "manifest.csv", root / "split", subsets=[200], seed=0)
    return root / "split"


def plant_copies(train: ImageSet, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Near-duplicates of n training images: small noise, 1–2 px shifts, brightness/contrast changes, and mixes."""
    rng = np.random.default_rng(seed)
    src = rng.choice(len(train), n, replace=False)
    out, kinds = [], []
    for j, i in enumerate(src):
        im = train.images[i].astype(float)
        kind = ("noise", "shift", "intensity", "shift+intensity+noise")[j % 4]
        if "shift" in kind:
            im = nd_shift(im, (rng.choice([-2, -1, 1, 2]), rng.choice([-2, -1, 1, 2])), order=0, mode="constant", cval=0)
        if "intensity" in kind:
            im = im * rng.uniform(0.85, 1.15) + rng.uniform(-10, 10)
        if "noise" in kind:
            im = im + rng.normal(0, 4, im.shape)
        out.append(np.clip(im, 0, 255).round().astype(np.uint8))
        kinds.append(kind)
    return np.stack(out), src, kinds


def _npz(path, images, views):
    labels = np.array([CLASSES.index(v) for v in views])
    np.savez(path, images=images, labels=labels, classes=np.array(CLASSES), seeds=np.arange(len(images)))
    return str(path)


def test_planted_copies_are_flagged_and_held_out_images_are_not(data, tmp_path):
    train, val, test = (load_image_set(data / f"{s}.csv") for s in ("train", "val", "test"))
    copies, src, kinds = plant_copies(train, 60)
    # the "synthetic" set: planted copies, the calibration images themselves (val) and unseen held-out images (test)
    images = np.concatenate([copies, val.images, test.images])
    views = np.concatenate([train.views[src], val.views, test.views])
    fake = _npz(tmp_path / "fake.npz", images, views)
    r = audit(train=str(data / "train.csv"), holdout=str(data / "val.csv"), fake=fake, out=str(tmp_path / "audit"),
              filter=str(tmp_path / "kept"), pairs=8, progress=False)
    nearest = __import__("pandas").read_csv(tmp_path / "audit" / "nearest.csv")
    flagged = nearest["flagged"].to_numpy()
    n_c, n_v = len(copies), len(val)
    recall = flagged[:n_c].mean()
    assert recall >= 0.95, {k: flagged[:n_c][np.array(kinds) == k].mean() for k in set(kinds)}
    assert (nearest["nn_pixel"].to_numpy()[:n_c] == src).mean() >= 0.95  # and the right training image is named
    assert flagged[n_c:n_c + n_v].mean() <= 0.05  # held-out images used for calibration
    assert flagged[n_c + n_v:].mean() <= 0.10  # unseen held-out images: ≈5% expected, binomial noise on ~100
    assert r["calibration"]["fraction"] <= 0.05 and r["thresholds"]["tau_pixel"] > 0
    assert r["flagged"]["count"] == int(flagged.sum())
    assert set(r["flagged"]["per_class"]) <= set(CLASSES)
    # the filtered set is a sample directory any stage can read, holding exactly the unflagged images
    kept = load_image_set(tmp_path / "kept")
    assert len(kept) == r["filtered"]["kept"] == int((~flagged).sum())
    assert len(read_manifest(tmp_path / "kept" / "manifest.csv", check_sha1=True)) == len(kept)
    with np.load(tmp_path / "kept" / "samples.npz") as z:
        np.testing.assert_array_equal(z["source_index"], np.flatnonzero(~flagged))
        np.testing.assert_array_equal(z["images"], images[~flagged])
    for f in ("hist_pixel.png", "hist_pixel_l2.png", "closest_pairs.png", "privacy.json", "config.json"):
        assert (tmp_path / "audit" / f).is_file(), f


# ----------------------------------------------------------------------------------------------
# The pieces


def test_tolerant_distance_ignores_small_shifts_and_brightness_only():
    rng = np.random.default_rng(1)
    t = (rng.random((3, 24, 24)) * 200).astype(np.uint8)
    cand = np.arange(3)[:, None]
    for dy, dx in ((0, 0), (2, -1), (-2, 2)):
        q = np.stack([nd_shift(x.astype(float), (dy, dx), order=0, cval=0) * 0.8 + 20 for x in t]).round().astype(np.uint8)
        d, idx, off = tolerant_distance(q, t, cand, max_shift=2)
        assert (d < 0.02).all() and (off == [dy, dx]).all() and (idx == np.arange(3)).all()
    q = np.stack([nd_shift(x.astype(float), (4, 0), order=0, cval=0) for x in t]).astype(np.uint8)
    assert (tolerant_distance(q, t, cand, max_shift=2)[0] > 0.5).all()  # beyond the searched shifts


def test_carlini_ratio_and_nndr_formulas():
    d = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    np.testing.assert_allclose(carlini_ratio(d, alpha=0.5, n=4), [1.0 / (0.5 * 2.5), 0.0, 2.0])
    np.testing.assert_allclose(nndr(d), [0.5, 0.0, 1.0])


def test_calibration_keeps_the_whole_rule_within_the_percentile():
    rng = np.random.default_rng(2)
    hold = {"pixel": rng.random(400), "feature": rng.random(400), "carlini": 1 + rng.random(400)}
    tau, q = calibrate(hold, ["pixel"], 5.0, use_carlini=True)
    assert q == 5.0 and tau["pixel"] == pytest.approx(np.percentile(hold["pixel"], 5))
    tau, q = calibrate(hold, ["pixel", "feature"], 5.0, use_carlini=True)
    rate = flag(hold, tau, True)["any"].mean()
    assert q < 5.0 and 0.04 <= rate <= 0.05  # two independent spaces share the 5% budget


# ----------------------------------------------------------------------------------------------
# Membership inference


def test_loss_threshold_attack_catches_a_memorising_model(data):
    """An oracle that denoises by snapping to the nearest member image: members have zero loss, so AUC ≈ 1."""
    from echosynth.gen.diffusion.process import Diffusion

    members, others = load_image_set(data / "train.csv"), load_image_set(data / "val.csv")
    diffusion = Diffusion(1000, "linear", learn_sigma=False)
    bank = torch.from_numpy(members.images).float().div(127.5).sub(1).flatten(1)

    def model(x_t, t, y):
        ab = float(diffusion.alphas_cumprod[int(t[0])])  # one t per call
        x0 = bank[torch.cdist(x_t.flatten(1), ab ** 0.5 * bank).argmin(1)]
        return ((x_t.flatten(1) - ab ** 0.5 * x0) / (1 - ab) ** 0.5).reshape(x_t.shape)

    run = SimpleNamespace(model=model, diffusion=diffusion, classes=CLASSES, image_size=32, step=0, weights="oracle")
    r = loss_threshold_attack(run, members, others, timesteps=[50], max_images=40)
    assert r["n_members"] == r["n_nonmembers"] == 40 and r["auc"] > 0.99 and r["tpr_at_0.01_fpr"] > 0.9
    assert roc_summary(np.zeros(5), np.zeros(5))["auc"] == 0.5


def test_privacy_cli_with_echo_features_and_membership(data, tmp_path, capsys):
    cls = make_standin_classifier(tmp_path / "cls", CLASSES, 32)
    gen = make_standin_diffusion_run(tmp_path / "gen", CLASSES, steps=[3])
    test = load_image_set(data / "test.csv")
    write_sample_dir(tmp_path / "samples", test)
    out = tmp_path / "audit"
    code = privacy_main(["--train", str(data / "train.csv"), "--fake", str(tmp_path / "samples"), "--classifier", str(cls),
                         "--run", str(gen), "--mia_max", "24", "--pairs", "8", "--out", str(out),
                         "--cache_dir", str(tmp_path / "cache")])
    assert code == 0 and "membership attack: AUC" in capsys.readouterr().out
    r = json.loads((out / "privacy.json").read_text())
    assert r["schema"] == "echosynth.privacy/1" and r["rule"]["spaces"] == ["pixel", "feature"]
    assert r["sets"]["holdout"]["path"].endswith("val.csv")  # found beside train.csv
    assert {"tau_pixel", "tau_feature", "per_space_percentile"} <= set(r["thresholds"])
    assert {"pixel", "pixel_l2", "feature", "nndr_pixel", "nndr_feature", "carlini"} <= set(r["distances"])
    m = r["membership"]
    assert m["n_members"] == 24 and 0.0 <= m["auc"] <= 1.0 and m["checkpoint"]["step"] == 3
    for f in ("hist_feature.png", "closest_pairs_feature.png", "hist_membership.png", "nearest.csv"):
        assert (out / f).is_file(), f


def test_privacy_errors_are_clear(data, tmp_path, capsys):
    big = load_image_set(data / "test.csv", size=40)
    write_sample_dir(tmp_path / "big", big)
    with pytest.raises(ValueError, match="--size"):
        audit(train=str(data / "train.csv"), fake=str(tmp_path / "big"), out=str(tmp_path / "a"))
    with pytest.raises(SystemExit) as exit_info:
        privacy_main(["--train", str(data / "train.csv"), "--out", str(tmp_path / "b")])
    assert exit_info.value.code == 2 and "--fake is required" in capsys.readouterr().err
