"""Class fidelity (a judge trained on real images), sector fidelity and the quality gate.

The metric is checked against a hand computation on a toy judge whose predictions are written
into the images; the gate against phantom frames with a pixel logistic-regression judge: real
frames passed off as synthetic pass, noise and real frames of the wrong class fail.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from echosynth.evaluate.class_fidelity import above_chance_ratio, class_fidelity, class_grid
from echosynth.evaluate.fidelity import compute_fidelity
from echosynth.evaluate.fidelity import main as fidelity_main
from echosynth.evaluate.gate import GateConfig, gate_verdict
from echosynth.evaluate.sector import outside_means, sector_fidelity, sector_mask
from echosynth.gen.data.image_sets import ImageSet, load_image_set, write_sample_dir
from tests.standin import make_standin_classifier

CLASSES = ["A2C", "A4C", "PLAX", "PSAX"]


class PixelJudge:
    """Toy judge: pixel (0, 0) of an image is the index of the class it predicts (probability 0.7)."""

    classes = CLASSES

    def predict_proba(self, images):
        p = np.full((len(images), len(self.classes)), 0.1)
        p[np.arange(len(images)), images[:, 0, 0].astype(int)] = 0.7
        return p


def _images(pred: list[int]) -> np.ndarray:
    ims = np.zeros((len(pred), 8, 8), np.uint8)
    ims[:, 0, 0] = pred
    return ims


def test_class_fidelity_against_a_hand_computation():
    # synthetic: A2C predicted [A2C, A2C, A4C, A2C] -> 3/4; A4C [A4C, PLAX] -> 1/2; PLAX [PLAX, PLAX, PLAX, A2C] -> 3/4
    syn_pred = [0, 0, 1, 0, 1, 2, 2, 2, 2, 0]
    syn_views = ["A2C"] * 4 + ["A4C"] * 2 + ["PLAX"] * 4
    # real held out: A2C 2/2, A4C 1/2, PLAX 2/3; a PSAX image is ignored (not a synthetic class)
    real_pred = [0, 0, 1, 0, 2, 2, 0, 3]
    real_views = ["A2C", "A2C", "A4C", "A4C", "PLAX", "PLAX", "PLAX", "PSAX"]
    r = class_fidelity(PixelJudge(), _images(syn_pred), syn_views, _images(real_pred), real_views, seed=1)
    k = 3
    acc_syn = (3 / 4 + 1 / 2 + 3 / 4) / 3
    bacc = (1 + 1 / 2 + 2 / 3) / 3
    assert r["classes"] == ["A2C", "A4C", "PLAX"] and r["k"] == k and r["chance"] == pytest.approx(1 / 3)
    assert r["acc_syn"] == pytest.approx(acc_syn) and r["acc_syn_pooled"] == pytest.approx(7 / 10)
    assert r["bacc_real"] == pytest.approx(bacc) and r["n_real"] == 7
    assert r["ratio"] == pytest.approx((acc_syn - 1 / k) / (bacc - 1 / k))
    assert r["per_class"]["A4C"] == {"n_syn": 2, "acc_syn": 0.5, "n_real": 2, "acc_real": 0.5}
    assert r["confusion_syn"] == [[3, 1, 0], [0, 1, 1], [1, 0, 3]]
    lo, hi = r["ratio_ci"]
    assert lo < r["ratio"] < hi
    json.dumps(r)  # fidelity.json material


def test_the_argmax_runs_over_the_synthetic_sets_classes_only():
    class Biased(PixelJudge):  # always most confident in PSAX, which the synthetic set does not hold
        def predict_proba(self, images):
            p = super().predict_proba(images)
            p[:, 3] = 0.9
            return p

    r = class_fidelity(Biased(), _images([0, 1]), ["A2C", "A4C"], _images([0, 1]), ["A2C", "A4C"])
    assert r["k"] == 2 and r["acc_syn"] == 1.0 and r["bacc_real"] == 1.0 and r["ratio"] == pytest.approx(1.0)


def test_ratio_undefined_for_a_judge_at_chance_and_unknown_classes_refused():
    assert above_chance_ratio(0.9, 0.25, 4) is None and above_chance_ratio(0.25, 1.0, 4) == 0.0
    r = class_fidelity(PixelJudge(), _images([0, 1]), ["A2C", "A4C"], _images([1, 0]), ["A2C", "A4C"])
    assert r["ratio"] is None and r["ratio_ci"] is None and "no better than chance" in " ".join(r["notes"])
    r = class_fidelity(PixelJudge(), _images([0]), ["A2C"], None, None)
    assert r["bacc_real"] is None and r["ratio"] is None
    with pytest.raises(ValueError, match="does not know"):
        class_fidelity(PixelJudge(), _images([0]), ["SC"], None, None)


def test_bootstrap_interval_matches_resampling_the_images():
    rng = np.random.default_rng(0)
    syn_views = np.repeat(CLASSES, 50)
    truth = np.repeat(np.arange(4), 50)
    syn_pred = np.where(rng.random(200) < 0.7, truth, rng.integers(0, 4, 200))
    real_views = np.repeat(CLASSES, 40)
    real_truth = np.repeat(np.arange(4), 40)
    real_pred = np.where(rng.random(160) < 0.9, real_truth, (real_truth + 1) % 4)
    r = class_fidelity(PixelJudge(), _images(list(syn_pred)), syn_views, _images(list(real_pred)), real_views,
                       n_boot=4000, seed=3)
    # direct nonparametric bootstrap: resample images within each class of both sets
    ratios = []
    for _ in range(2000):
        s = np.mean([(syn_pred[truth == i][rng.integers(0, 50, 50)] == i).mean() for i in range(4)])
        q = np.mean([(real_pred[real_truth == i][rng.integers(0, 40, 40)] == i).mean() for i in range(4)])
        ratios.append((s - 0.25) / (q - 0.25))
    lo, hi = np.quantile(ratios, [0.025, 0.975])
    assert r["ratio_ci"][0] == pytest.approx(lo, abs=0.03) and r["ratio_ci"][1] == pytest.approx(hi, abs=0.03)


def test_sector_mask_and_outside_means_by_hand():
    real = np.zeros((50, 4, 4), np.uint8)
    real[:, 1:3, 1:3] = 200  # the "sector": the centre 2×2
    real[0, 0, 0] = 255  # one frame in 50 (2%) is bright at a corner: still outside at share 0.98
    real[:2, 3, 3] = 255  # 2 frames of 50 (4%): no longer black in 98% of frames
    mask = sector_mask(real, black_level=10, share=0.98)
    expected = np.ones((4, 4), bool)
    expected[1:3, 1:3] = False
    expected[3, 3] = False
    assert (mask == expected).all()
    fake = np.full((3, 4, 4), 30, np.uint8)
    fake[1] = 0
    assert outside_means(fake, mask) == pytest.approx([30.0, 0.0, 30.0])
    holdout = np.zeros((2, 4, 4), np.uint8)
    holdout[0, 0, 1] = 110  # 110 over 11 outside pixels, one frame of two -> 5.0
    r = sector_fidelity(real, fake, holdout, ["A2C", "A4C", "A2C"])
    assert r["outside_mean_fake"] == pytest.approx(20.0) and r["outside_mean_real"] == pytest.approx(5.0)
    assert r["outside_fraction"] == pytest.approx(11 / 16) and r["real_reference"] == "holdout"
    assert r["per_class"] == {"A2C": 30.0, "A4C": 0.0}
    none = sector_fidelity(np.full((5, 4, 4), 90, np.uint8), fake)
    assert none["outside_mean_fake"] is None and "does not apply" in none["notes"][0]


def test_gate_thresholds_by_hand():
    fid = {"metrics": {"echo": {"overall": {"fake": {"fid": 900.0, "n_fake": 400}, "floor": {"fid": 80.0},
                                            "fake_at_floor_n": {"fid": 790.0}, "n_floor": 100}}},
           "class_fidelity": {"ratio": 0.5, "acc_syn": 0.6, "bacc_real": 0.95, "chance": 0.25},
           "sector_fidelity": {"outside_mean_fake": 8.0, "outside_mean_real": 1.0}}
    g = gate_verdict(fid)
    assert g["status"] == "pass", g  # 0.5 ≥ 0.5; 790 ≤ 800 at the floor's n; 8 ≤ 3·1 + 5
    fid["sector_fidelity"]["outside_mean_fake"] = 8.5
    fid["class_fidelity"]["ratio"] = 0.49
    g = gate_verdict(fid)
    assert g["status"] == "fail" and [c["ok"] for c in g["checks"]] == [False, True, False]
    assert "echo features at n=100" in g["checks"][1]["text"]
    assert gate_verdict(fid, GateConfig(min_class_ratio=0.4, outside_margin=6))["status"] == "pass"
    assert gate_verdict(None)["status"] == "unverified"
    assert gate_verdict({"metrics": {}})["status"] == "unverified"
    only_fid = gate_verdict({"metrics": fid["metrics"]})
    assert only_fid["status"] == "pass" and [c["ok"] for c in only_fid["checks"]] == [None, True, None]


# ----------------------------------------------------------------------------------------------
# The gate on phantom frames


@pytest.fixture(scope="module")
def phantom_sets(tmp_path_factory):
    """Phantom frames at 32 px: judge training (400), real reference and held-out real (100 each), "synthetic"
    candidates (120), and a 16-frame reference for the error cases."""
    from sklearn.linear_model import LogisticRegression

    from echosynth.gen.data.phantom import plan, render

    items = plan(720, seed=1)
    ims = np.stack([render(it, 1, 32) for it in items])
    views = np.array([it.view for it in items], dtype=object)
    root = tmp_path_factory.mktemp("phantom_sets")

    def save(name, idx, images=None, v=None):
        s = ImageSet.from_views(name, ims[idx] if images is None else images, views[idx] if v is None else v,
                                sources=np.full(len(idx), "phantom", dtype=object))
        return write_sample_dir(root / name, s)

    lr = LogisticRegression(max_iter=300, class_weight="balanced", C=0.1)
    lr.fit(ims[:400].reshape(400, -1) / 255.0, views[:400].astype(str))

    class LogRegJudge:
        classes = list(lr.classes_)

        def predict_proba(self, images):
            return lr.predict_proba(images.reshape(len(images), -1) / 255.0)

    fake = np.arange(600, 720)
    noise = np.random.default_rng(0).integers(0, 256, (len(fake), 32, 32)).astype(np.uint8)
    wrong = np.array([CLASSES[(CLASSES.index(v) + 1) % 4] for v in views[fake]], dtype=object)
    return {"judge": LogRegJudge(), "real": save("real", np.arange(400, 500)), "holdout": save("holdout", np.arange(500, 600)),
            "as_synthetic": save("as_synthetic", fake), "noise": save("noise", fake, noise),
            "wrong_class": save("wrong_class", fake, v=wrong), "tiny": save("tiny", np.arange(16))}


def _score(sets, fake, tmp_path, features):
    r = compute_fidelity(real=str(sets["real"]), holdout=str(sets["holdout"]), fake=str(sets[fake]),
                         features=["echo"], classifier=features, out=str(tmp_path / fake), cache_dir="",
                         kid_subsets=5, curve=False, per_class=False, progress=False)
    f, h = load_image_set(sets[fake]), load_image_set(sets["holdout"])
    r["class_fidelity"] = class_fidelity(sets["judge"], f.images, f.views, h.images, h.views)
    return r


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """Echo features of an untrained 32-px classifier (fast on CPU), and the judge run of the CLI tests."""
    return str(make_standin_classifier(tmp_path_factory.mktemp("standin") / "clf", CLASSES, 32))


def test_gate_passes_real_frames_passed_off_as_synthetic(phantom_sets, standin, tmp_path):
    r = _score(phantom_sets, "as_synthetic", tmp_path, standin)
    g = gate_verdict(r)
    assert g["status"] == "pass", g["checks"]
    assert r["class_fidelity"]["ratio"] > 0.7 and r["sector_fidelity"]["outside_mean_fake"] == 0.0
    assert (tmp_path / "as_synthetic" / "class_grid.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("fake,failing", [("noise", {"class fidelity", "FID", "sector fidelity"}),
                                          ("wrong_class", {"class fidelity"})])
def test_gate_fires_on_noise_and_on_real_frames_of_the_wrong_class(phantom_sets, standin, tmp_path, fake, failing):
    g = gate_verdict(_score(phantom_sets, fake, tmp_path, standin))
    assert g["status"] == "fail"
    assert {c["name"] for c in g["checks"] if c["ok"] is False} == failing, g["checks"]


def test_fidelity_cli_writes_class_and_sector_fidelity_with_a_judge_run(phantom_sets, standin, tmp_path, capsys):
    out = tmp_path / "fid"
    assert fidelity_main(["--real", str(phantom_sets["real"]), "--holdout", str(phantom_sets["holdout"]),
                          "--fake", str(phantom_sets["noise"]), "--judge", standin, "--features", "echo",
                          "--classifier", standin, "--out", str(out), "--cache_dir", "", "--kid_subsets", "5",
                          "--curve", "false", "--per_class", "false"]) == 0
    stdout = capsys.readouterr().out
    r = json.loads((out / "fidelity.json").read_text())
    cf, sf = r["class_fidelity"], r["sector_fidelity"]
    assert cf["k"] == 4 and cf["n_syn"] == 120 and cf["n_real"] == 100 and set(cf["per_class"]) == set(CLASSES)
    assert cf["judge"]["arch"] == "madani" and sf["outside_mean_fake"] > 100 and sf["outside_mean_real"] == 0.0
    assert (out / "class_grid.png").read_bytes()[:4] == b"\x89PNG"
    assert "[class] judge accuracy" in stdout and "[gate] FAIL: FID 3" in stdout
    assert r["gate"]["status"] == "fail" and r["gate"]["thresholds"] == {  # the defaults
        "min_class_ratio": 0.5, "max_fid_over_floor": 10.0, "fid_features": "auto", "outside_factor": 3.0,
        "outside_margin": 5.0}


def test_fidelity_json_carries_the_gate_verdict_under_the_command_line_thresholds(phantom_sets, standin, tmp_path,
                                                                                  capsys):
    """Thresholds lax enough for noise to pass: the verdict written is the one under the flags, not the defaults."""
    out = tmp_path / "fid"
    lax = {"min_class_ratio": -1.0, "max_fid_over_floor": 1e6, "fid_features": "echo", "outside_factor": 1.0,
           "outside_margin": 255.0}
    assert fidelity_main(["--real", str(phantom_sets["real"]), "--holdout", str(phantom_sets["holdout"]),
                          "--fake", str(phantom_sets["noise"]), "--judge", standin, "--features", "echo",
                          "--classifier", standin, "--out", str(out), "--cache_dir", "", "--kid_subsets", "5",
                          "--curve", "false", "--per_class", "false",
                          *[a for k, v in lax.items() for a in (f"--gate.{k}", str(v))]]) == 0
    assert "[gate] PASS: passes FID, sector fidelity" in capsys.readouterr().out  # the untrained judge: n/a
    r = json.loads((out / "fidelity.json").read_text())
    g = r.pop("gate")
    assert g["status"] == "pass" and g["thresholds"] == lax and [c["ok"] for c in g["checks"]] == [None, True, True]
    assert g["checks"][2]["limit"] == pytest.approx(1.0 * r["sector_fidelity"]["outside_mean_real"] + 255.0)
    assert g == gate_verdict(r, GateConfig(**lax))  # the same verdict as applying the gate to the numbers beside it
    assert gate_verdict(r)["status"] == "fail"  # which the default thresholds fail
    assert json.loads((out / "config.json").read_text())["gate"] == lax


def test_class_grid_png():
    ims = np.random.default_rng(0).integers(0, 255, (8, 16, 16)).astype(np.uint8)
    png = class_grid(ims, ["A2C"] * 4 + ["A4C"] * 4, ims, ["A2C"] * 4 + ["A4C"] * 4, ["A2C", "A4C"], 4,
                     {"A2C": {"acc_syn": 0.5, "acc_real": 1.0}})
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("content", [b"", b"not a zip at all", None])
def test_truncated_or_garbage_samples_npz_is_one_line_exit_2(tmp_path, phantom_sets, content, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    good = (phantom_sets["noise"] / "samples.npz").read_bytes()
    (bad / "samples.npz").write_bytes(good[:len(good) // 2] if content is None else content)
    assert fidelity_main(["--real", str(phantom_sets["tiny"]), "--fake", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and str(bad / "samples.npz") in err and "not a readable .npz" in err


def test_garbage_config_json_of_a_run_is_one_line_exit_2(tmp_path, phantom_sets, standin, capsys):
    from tests.standin import make_standin_diffusion_run

    run = make_standin_diffusion_run(tmp_path / "gen", CLASSES)
    judge = make_standin_classifier(tmp_path / "judge", CLASSES, 32)
    (run / "config.json").write_text("{not json")
    (judge / "seed-0" / "model.json").write_text("[1, 2")
    for args in (["--run", str(run), "--checkpoints", "all", "--n", "4"],
                 ["--fake", str(phantom_sets["tiny"]), "--judge", str(judge)]):
        code = fidelity_main(["--real", str(phantom_sets["tiny"]), "--features", "echo", "--classifier", standin,
                              "--out", str(tmp_path / "o"), "--overwrite", "true", *args])
        err = capsys.readouterr().err
        assert code == 2 and err.strip().count("\n") == 0, err
        assert ("config.json" if "--run" in args else "model.json") in err
