"""Smoke run of benchmarks/classify_precision.py: one round of one step, the JSON it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_classify_precision_smoke(tmp_path):
    out = tmp_path / "c.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks/classify_precision.py"), "--archs", "small_cnn",
                    "--rounds", "1", "--steps", "1", "--batch", "4", "--out", str(out)],
                   check=True, cwd=REPO, timeout=60)
    r = json.loads(out.read_text())
    assert r["threads"] == 1 and "cpu_bf16_flags" in r and "load_average_start" in r
    res = r["results"]["small_cnn"]
    assert len(res["train_ratio_per_round"]) == 1 and res["train_ratio_bf16_vs_fp32"] > 0
    assert res["predict_images_per_s_bf16"] > 0
