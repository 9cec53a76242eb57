"""`gen/prepare.py` through its CLI: phantom dataset, refusal to overwrite, resume, determinism, split."""

from __future__ import annotations

import json

import pandas as pd

from conftest import PYTHON, run_cli
from echosynth.gen.core.io import write_json
from echosynth.gen.data.manifest import read_manifest


def _phantom(out, *extra, check=True):
    return run_cli([PYTHON, "gen/prepare.py", "phantom", "--out", str(out), "--n", "40", "--size", "32", *extra], check=check)


def test_phantom_cli_writes_valid_manifest_and_summary(tmp_path):
    proc = _phantom(tmp_path / "d", "--workers", "2")
    m = read_manifest(tmp_path / "d" / "manifest.csv", decode_images=True, check_sha1=True)
    assert len(m) == 40 and set(m.df["split"]) == {""}
    assert m.df["quality"].between(0, 10).all()
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["n_images"] == 40 and sum(summary["by_view"].values()) == 40
    assert "total" in proc.stdout and "phantom dataset" in proc.stdout
    assert not (tmp_path / "d" / ".prepare.json").exists()


def test_refuses_overwrite_then_overwrites(tmp_path):
    _phantom(tmp_path / "d")
    again = _phantom(tmp_path / "d", check=False)
    assert again.returncode == 2 and "pass --overwrite" in again.stderr
    _phantom(tmp_path / "d", "--overwrite", "--seed", "1")
    assert len(read_manifest(tmp_path / "d" / "manifest.csv")) == 40


def test_deterministic_across_workers_and_resumable(tmp_path):
    _phantom(tmp_path / "a", "--workers", "1")
    _phantom(tmp_path / "b", "--workers", "2")
    a = pd.read_csv(tmp_path / "a" / "manifest.csv")
    b = pd.read_csv(tmp_path / "b" / "manifest.csv")
    assert a["sha1"].tolist() == b["sha1"].tolist()
    # Simulate an interrupted run: the marker and a few images, no manifest.
    c = tmp_path / "c"
    write_json(c / ".prepare.json", {"kind": "phantom", "n": 40, "size": 32, "seed": 0})
    for rel in a["path"][:5]:
        (c / rel).parent.mkdir(parents=True, exist_ok=True)
        (c / rel).write_bytes((tmp_path / "a" / rel).read_bytes())
    _phantom(c)
    assert pd.read_csv(c / "manifest.csv")["sha1"].tolist() == a["sha1"].tolist()


def test_split_cli_and_config_errors(tmp_path, phantom_dir):
    out = tmp_path / "s"
    proc = run_cli([PYTHON, "gen/prepare.py", "split", "--manifest", str(phantom_dir / "manifest.csv"),
                    "--out", str(out), "--subsets", "50,100,100000"])
    assert "nested training subsets: [50, 100," in proc.stdout and "dropped" in proc.stdout
    for name in ("manifest", "train", "val", "test", "shift", "train_50", "train_100"):
        read_manifest(out / f"{name}.csv")
    bad = run_cli([PYTHON, "gen/prepare.py", "split", "--manifest", "x.csv", "--out", str(out), "--subset", "5"], check=False)
    assert bad.returncode == 2 and "unknown config key 'subset'" in bad.stderr and "subsets" in bad.stderr
    missing = run_cli([PYTHON, "gen/prepare.py", "split", "--manifest", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "t")], check=False)
    assert missing.returncode == 2 and "nope.csv: manifest not found" in missing.stderr
