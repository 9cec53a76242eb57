"""evaluate/fidelity.py: FID & co. with the real-vs-real floor, curves, multi-process statistics, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import PYTHON, accelerate_cmd, run_cli
from echosynth.evaluate.fidelity import compute_fidelity, default_holdout
from echosynth.evaluate.fidelity import main as fidelity_main
from echosynth.gen.data.image_sets import load_image_set, write_sample_dir
from tests.standin import make_standin_diffusion_run, make_standin_inception

METRIC_KEYS = {"n_real", "n_fake", "fid", "kid", "kid_std", "kid_subset_size", "precision", "recall", "density",
               "coverage", "n_manifold"}


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    return str(make_standin_inception(tmp_path_factory.mktemp("standin") / "inception.pt", dim=32))


@pytest.fixture(scope="module")
def samples(split_dir, tmp_path_factory):
    """A sample directory (gen/sample.py layout) holding the test split's images, darkened: a 'worse' generator."""
    s = load_image_set(split_dir / "test.csv")
    s.images = (s.images * 0.7).astype(np.uint8)
    return write_sample_dir(tmp_path_factory.mktemp("samples") / "samples", s)


def _opts(standin, tmp_path, **kw):
    return dict(inception_weights=standin, out=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
                kid_subsets=5, progress=False, **kw)


def test_fid_of_a_set_with_itself_is_zero(split_dir, standin, tmp_path):
    r = compute_fidelity(real=f"{split_dir / 'manifest.csv'}#split=train", fake=str(split_dir / "train.csv"),
                         **_opts(standin, tmp_path, curve=False))
    o = r["metrics"]["inception"]["overall"]
    assert abs(o["fake"]["fid"]) < 1e-6 and abs(o["fake"]["kid"]) < 1e-3
    assert o["fake"]["precision"] == 1.0 and o["fake"]["recall"] == 1.0 and o["fake"]["coverage"] == 1.0
    for view, entry in r["metrics"]["inception"]["per_class"].items():
        assert abs(entry["fake"]["fid"]) < 1e-6, view
    # the holdout came from the manifest's val split automatically, and the floor sits beside the number
    assert r["sets"]["holdout"]["path"].endswith("#split=val")
    assert o["floor"]["fid"] > 0 and o["n_floor"] == r["sets"]["holdout"]["n"]


def test_cli_reports_floor_curves_and_a_worse_generator(split_dir, standin, samples, tmp_path):
    out = tmp_path / "fid"
    run_cli([PYTHON, "evaluate/fidelity.py", "--real", str(split_dir / "train.csv"), "--fake", str(samples),
             "--inception_weights", standin, "--out", str(out), "--cache_dir", str(tmp_path / "cache"),
             "--kid_subsets", "5", "--curve_sizes", "8,16"])
    r = json.loads((out / "fidelity.json").read_text())
    assert r["schema"] == "echosynth.fidelity/1" and r["sets"]["holdout"]["path"].endswith("val.csv")
    o = r["metrics"]["inception"]["overall"]
    assert set(o) >= {"fake", "floor", "fake_at_floor_n", "n_floor"}
    assert METRIC_KEYS <= set(o["fake"]) and METRIC_KEYS <= set(o["floor"])
    # darkened images are further from the real set than held-out real images are
    assert o["fake_at_floor_n"]["fid"] > 2 * o["floor"]["fid"]
    assert set(r["metrics"]["inception"]["per_class"]) == {"A2C", "A4C", "PLAX", "PSAX"}
    curve = r["curves"]["fid_vs_samples"]["inception"]
    assert [p["n"] for p in curve] == [8, 16, r["sets"]["fake"]["n"]]
    for f in ("fid_vs_samples.json", "fid_vs_samples.png", "config.json", "provenance.json"):
        assert (out / f).is_file(), f


def test_two_processes_combine_statistics_to_the_same_numbers(split_dir, standin, samples, tmp_path):
    # fp32: the combining of per-rank statistics is exact, which is what this checks. In bf16 (auto on
    # a CPU with native bf16) a feature depends slightly on the batch it was computed in, and the two
    # runs batch the images differently (FID 0.0992 against 0.0995 on this data).
    args = ["--real", str(split_dir / "train.csv"), "--fake", str(samples), "--inception_weights", standin,
            "--cache_dir", "", "--kid_subsets", "5", "--curve", "false", "--device", "cpu", "--mixed_precision", "no"]
    run_cli(accelerate_cmd("evaluate/fidelity.py", 2) + args + ["--out", str(tmp_path / "two")])
    one = compute_fidelity(**{a.lstrip("-"): b for a, b in zip(args[::2], args[1::2])} | {"out": str(tmp_path / "one")})
    two = json.loads((tmp_path / "two" / "fidelity.json").read_text())
    assert json.loads((tmp_path / "two" / "provenance.json").read_text())["world_size"] == 2
    a, b = one["metrics"]["inception"], two["metrics"]["inception"]
    for scope in ("overall", "A4C"):
        x = a["overall"] if scope == "overall" else a["per_class"][scope]
        y = b["overall"] if scope == "overall" else b["per_class"][scope]
        for k in ("fid", "kid", "precision", "recall", "density", "coverage"):
            assert x["fake"][k] == pytest.approx(y["fake"][k], rel=1e-6, abs=1e-9), (scope, k)


def test_fid_vs_checkpoint_curve_samples_every_kept_checkpoint(split_dir, standin, tmp_path):
    run = make_standin_diffusion_run(tmp_path / "gen", ["A2C", "A4C", "PLAX", "PSAX"], steps=[1, 2])
    r = compute_fidelity(real=str(split_dir / "train.csv"), run=str(run), checkpoints="all", n=6, sampling_steps=2,
                         **_opts(standin, tmp_path))
    pts = r["curves"]["fid_vs_checkpoint"]["inception"]
    assert [p["step"] for p in pts] == [1, 2] and all(p["n"] == 6 and p["reference"] == "holdout" for p in pts)
    out = tmp_path / "out"
    for f in ("fid_vs_checkpoint.json", "fid_vs_checkpoint.png", "checkpoint_samples.png"):
        assert (out / f).is_file(), f
    with pytest.raises(ValueError, match="no checkpoint at step"):
        compute_fidelity(real=str(split_dir / "train.csv"), run=str(run), checkpoints="7", n=6,
                         **_opts(standin, tmp_path, overwrite=True))


def test_clear_errors_for_sizes_empty_sets_and_missing_inputs(split_dir, standin, tmp_path, capsys):
    big = load_image_set(split_dir / "test.csv", size=40)
    write_sample_dir(tmp_path / "big", big)
    with pytest.raises(ValueError, match=r"image sizes differ \(real 32×32, fake 40×40.*--size"):
        compute_fidelity(real=str(split_dir / "train.csv"), fake=str(tmp_path / "big"), **_opts(standin, tmp_path))
    with pytest.raises(ValueError, match="empty"):
        compute_fidelity(real=f"{split_dir / 'train.csv'}#split=val", fake=str(tmp_path / "big"), **_opts(standin, tmp_path))
    with pytest.raises(FileNotFoundError, match="expected a manifest CSV"):
        compute_fidelity(real=str(tmp_path / "nope.csv"), fake=str(tmp_path / "big"), **_opts(standin, tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        fidelity_main(["--real", str(split_dir / "train.csv"), "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2 and "--fake" in capsys.readouterr().err
    assert default_holdout("a/train_1000.csv") == ""  # no sibling val.csv: no guess


def test_torch_fidelity_backend_agrees_or_explains(split_dir, standin, samples, tmp_path, capsys):
    """Where torch-fidelity imports, its numbers (same extractor) match ours; elsewhere the error says where it works."""
    from echosynth.evaluate.torch_fidelity_backend import BackendError, import_torch_fidelity

    opts = _opts(standin, tmp_path, backend="torch-fidelity", curve=False, per_class=False, kid_subset_size=10)
    try:
        import_torch_fidelity()
    except BackendError as e:
        assert "torchvision" in str(e) and "CUDA" in str(e)
        code = fidelity_main(["--real", str(split_dir / "train.csv"), "--fake", str(samples), "--inception_weights", standin,
                              "--backend", "torch-fidelity", "--cache_dir", "", "--out", str(tmp_path / "tf")])
        assert code == 2 and "torch-fidelity cannot be imported" in capsys.readouterr().err
        return
    r = compute_fidelity(real=str(split_dir / "train.csv"), fake=str(samples), **opts)
    diff = r["torch_fidelity"]["inception"]["difference"]
    assert abs(diff["fid"]) < 1e-3 * max(1.0, r["metrics"]["inception"]["overall"]["fake"]["fid"])
    assert abs(diff["precision"]) < 1e-6 and abs(diff["recall"]) < 1e-6
