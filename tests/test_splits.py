"""Patient-level splits and nested subsets: disjointness, proportions, nesting."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from echosynth.gen.data.build import build_splits
from echosynth.gen.data.manifest import read_manifest
from echosynth.gen.data.splits import assign_splits, balanced_order, subset_column, subset_ranks


def _table(n_patients=400, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        source = rng.choice(["tmed2", "lvh", "dynamic", "camus"], p=[0.5, 0.2, 0.2, 0.1])
        views = {"tmed2": ["A2C", "A4C", "PLAX", "PSAX"], "lvh": ["PLAX"], "dynamic": ["A4C"], "camus": ["A2C", "A4C"]}[source]
        for k in range(rng.integers(1, 6) if source == "tmed2" else 1):
            rows.append({"path": f"{source}/{p}/{k}.png", "view": rng.choice(views), "source": source,
                         "patient_id": f"{source}-{p}"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("counts", [[1118, 1002, 343, 450, 704, 272], [1, 1, 1, 500], [7, 3], [5]])
def test_balanced_order_every_prefix_within_one(counts):
    order = balanced_order(counts)
    assert np.bincount(order, minlength=len(counts)).tolist() == counts
    p = np.asarray(counts) / sum(counts)
    cum = np.cumsum(np.eye(len(counts))[order], axis=0)
    n = np.arange(1, len(order) + 1)[:, None]
    assert np.abs(cum - n * p).max() < 1.0


def test_balanced_order_random_proportions():
    rng = np.random.default_rng(1)
    for _ in range(30):
        counts = rng.integers(1, 60, size=rng.integers(2, 12)).tolist()
        order = balanced_order(counts)
        cum = np.cumsum(np.eye(len(counts))[order], axis=0)
        p = np.asarray(counts) / sum(counts)
        assert np.abs(cum - np.arange(1, len(order) + 1)[:, None] * p).max() < 1.0


def test_assign_splits_by_patient_with_holdout():
    df = _table()
    split = assign_splits(df, seed=3, holdout_sources=["camus"])
    assert (split[df["source"] == "camus"] == "shift").all()
    assert set(split[df["source"] != "camus"]) == {"train", "val", "test"}
    per_patient = df.assign(split=split).groupby("patient_id")["split"].nunique()
    assert (per_patient == 1).all(), "a patient spans splits"
    frac = split[df["source"] != "camus"].value_counts(normalize=True)
    assert abs(frac["train"] - 0.8) < 0.03 and abs(frac["val"] - 0.1) < 0.03 and abs(frac["test"] - 0.1) < 0.03
    # Each view × source stratum keeps roughly the same share in train as overall.
    rest = df[df["source"] != "camus"].assign(split=split)
    key = rest["view"] + "/" + rest["source"]
    overall = key.value_counts(normalize=True)
    in_train = key[rest["split"] == "train"].value_counts(normalize=True)
    assert (overall - in_train).abs().max() < 0.03
    assert split.equals(assign_splits(df, seed=3, holdout_sources=["camus"]))  # deterministic
    assert not split.equals(assign_splits(df, seed=4, holdout_sources=["camus"]))


def test_bad_fractions():
    with pytest.raises(ValueError, match="summing to 1"):
        assign_splits(_table(20), fractions=(0.5, 0.1, 0.1))


def test_subsets_nested_and_proportional():
    train = _table(600)
    ranks = subset_ranks(train, seed=0)
    assert sorted(ranks) == list(range(len(train)))
    sizes = [100, 200, 400, len(train)]
    col = subset_column(ranks, sizes)
    key = train["view"] + "/" + train["source"]
    p = key.value_counts(normalize=True)
    prev = set()
    for n in sizes:
        rows = set(train.index[col <= n])
        assert len(rows) == n and prev <= rows
        counts = key[list(rows)].value_counts().reindex(p.index, fill_value=0)
        assert (counts - n * p).abs().max() < 1.0, "a stratum is more than one image off its share"
        prev = rows


def test_build_splits_on_phantom(phantom_dir, split_dir):
    full = read_manifest(split_dir / "manifest.csv")
    assert len(full) == len(read_manifest(phantom_dir / "manifest.csv"))
    assert set(full.df.loc[full.df["source"].isin(["camus", "unity"]), "split"]) == {"shift"}
    train = read_manifest(split_dir / "train.csv")
    s60 = read_manifest(split_dir / "train_60.csv", decode_images=True)
    s120 = read_manifest(split_dir / "train_120.csv")
    assert len(s60) == 60 and len(s120) == 120 and set(s60.df["path"]) <= set(s120.df["path"]) <= set(train.df["path"])
    for name in ("val", "test"):
        other = read_manifest(split_dir / f"{name}.csv")
        assert not set(other.df["patient_id"]) & set(train.df["patient_id"])
    assert read_manifest(split_dir / "manifest.csv").filter(subset=60).df["path"].tolist() == s60.df["path"].tolist()
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_splits(phantom_dir / "manifest.csv", split_dir, subsets=[60])


def _copy_dataset(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst / "manifest.csv"


def test_split_declares_its_data_root_and_refuses_outside_or_changed_files(phantom_dir, tmp_path):
    import json

    from echosynth.gen.data.manifest import ManifestError

    m = _copy_dataset(phantom_dir, tmp_path / "data")
    build_splits(m, tmp_path / "split", subsets=[60], seed=0)
    roots = json.loads((tmp_path / "split" / "data_roots.json").read_text())
    assert roots == {"roots": ["../data"], "allow_outside": False}
    assert not (tmp_path / "split" / ".prepare.json").exists()
    read_manifest(tmp_path / "split" / "train_60.csv", check_sha1=True)  # rows point into ../data: allowed

    df = pd.read_csv(m, dtype=str, keep_default_na=False)
    (tmp_path / "secret.png").write_bytes((tmp_path / "data" / df["path"][0]).read_bytes())
    hostile = df.copy()
    hostile.loc[7, "path"] = "../secret.png"
    hostile.loc[7, "sha1"] = df["sha1"][0]
    hostile.to_csv(m, index=False)
    with pytest.raises(ManifestError, match=r"row 9 \(../secret.png\): path leaves the manifest's directory"):
        build_splits(m, tmp_path / "split2", subsets=[60])
    info = build_splits(m, tmp_path / "split3", subsets=[60], allow_outside=True)  # the explicit opt-in
    assert info["n_images"] == len(df)
    assert json.loads((tmp_path / "split3" / "data_roots.json").read_text())["allow_outside"] is True

    df.to_csv(m, index=False)
    (tmp_path / "data" / df["path"][4]).write_bytes((tmp_path / "data" / df["path"][5]).read_bytes())
    with pytest.raises(ManifestError, match=rf"row 6 \({df['path'][4]}\): sha1 mismatch"):
        build_splits(m, tmp_path / "split4", subsets=[60])
    assert not (tmp_path / "split4" / "manifest.csv").exists()


def test_split_resumes_after_an_interruption_with_identical_files(phantom_dir, tmp_path):
    import json

    from echosynth.gen.core.io import fingerprint, write_text

    out = tmp_path / "split"
    build_splits(phantom_dir / "manifest.csv", out, subsets=[60, 120], seed=0)
    files = sorted(p.name for p in out.iterdir())
    ref = {n: (out / n).read_bytes() for n in files}
    # As a kill leaves it: the marker of the settings, the full manifest, a torn train_60.csv, no splits.json.
    (out / "splits.json").unlink()
    write_text(out / "train_60.csv", "path,view\n")
    marker = {"kind": "split", "manifest": str((phantom_dir / "manifest.csv").resolve()),
              "manifest_sha1": fingerprint(phantom_dir / "manifest.csv"),
              "subsets": [60, 120], "seed": 0, "fractions": [0.8, 0.1, 0.1], "holdout_sources": ["camus", "unity"]}
    write_text(out / ".prepare.json", json.dumps(marker))
    build_splits(phantom_dir / "manifest.csv", out, subsets=[60, 120], seed=0)
    assert sorted(p.name for p in out.iterdir()) == files
    assert all((out / n).read_bytes() == ref[n] for n in files if n != "splits.json")
    with pytest.raises(FileExistsError, match="--overwrite"):  # a finished output is not redone silently
        build_splits(phantom_dir / "manifest.csv", out, subsets=[60, 120], seed=0)
    # Another setting is not a resume of this one.
    write_text(out / ".prepare.json", json.dumps({**marker, "seed": 1}))
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_splits(phantom_dir / "manifest.csv", out, subsets=[60, 120], seed=0)


@pytest.mark.parametrize("value, message", [("-5", "must be a whole number of training images >= 1"),
                                            ("0", "must be a whole number of training images >= 1"),
                                            ("100,-1", "must be a whole number"),
                                            ("1.5", "expected an integer, got '1.5'")])
def test_split_cli_validates_subsets(phantom_dir, tmp_path, value, message):
    from conftest import PYTHON, run_cli

    proc = run_cli([PYTHON, "gen/prepare.py", "split", "--manifest", str(phantom_dir / "manifest.csv"),
                    "--out", str(tmp_path / "s"), "--subsets", value], check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "s").exists()
