"""evaluate/embed.py: seeded t-SNE/UMAP maps of echo features, the CSV of coordinates, the figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from echosynth.evaluate.embed import embed, reduce, tsne_2d, umap_2d
from echosynth.gen.core.config import ConfigError
from echosynth.gen.data.image_sets import load_image_set, write_sample_dir
from tests.standin import make_standin_classifier


def _blobs(n=90, d=20, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, d)) * 4
    return centres[np.arange(n) % 3] + rng.normal(size=(n, d))


def test_tsne_is_deterministic_with_a_seed():
    x = reduce(_blobs(), 10, 42)
    a, p = tsne_2d(x, 30, 42)
    b, _ = tsne_2d(x, 30, 42)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (90, 2) and p == pytest.approx(89 / 3)  # perplexity capped below n/3 for tiny sets


def test_embed_writes_coordinates_and_figures_reproducibly(split_dir, tmp_path):
    cls = make_standin_classifier(tmp_path / "cls", ["A2C", "A4C", "PLAX", "PSAX"], 32)
    write_sample_dir(tmp_path / "samples", load_image_set(split_dir / "test.csv"))
    opts = dict(real=str(split_dir / "train.csv"), fake=str(tmp_path / "samples"), classifier=str(cls),
                cache_dir=str(tmp_path / "cache"), max_per_set=60, progress=False)
    summary = embed(out=str(tmp_path / "e1"), **opts)
    df = pd.read_csv(tmp_path / "e1" / "embedding.csv")
    assert summary["n"] == {"real": 60, "synthetic": 26} and len(df) == 86
    assert {"set", "index", "view", "source", "path", "tsne_x", "tsne_y", "umap_x", "umap_y"} <= set(df.columns)
    assert set(df["set"]) == {"real", "synthetic"} and df[["tsne_x", "umap_y"]].notna().all().all()
    for method in ("tsne", "umap"):
        for name in ("by_view", "by_source", "by_set", "density"):
            assert (tmp_path / "e1" / f"{method}_{name}.png").is_file(), (method, name)
    # same inputs and seed: the same map (UMAP with a random_state runs single-threaded)
    embed(out=str(tmp_path / "e2"), methods=["umap"], **opts)
    again = pd.read_csv(tmp_path / "e2" / "embedding.csv")
    np.testing.assert_array_equal(again[["umap_x", "umap_y"]].to_numpy(), df[["umap_x", "umap_y"]].to_numpy())
    x = reduce(np.random.default_rng(1).normal(size=(40, 8)), 50, 42)
    np.testing.assert_array_equal(umap_2d(x, seed=3), umap_2d(x, seed=3))


def test_embed_config_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="--classifier"):
        embed(real="x.csv", out=str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="--real is required"):
        embed(out=str(tmp_path / "o"), features="inception")
