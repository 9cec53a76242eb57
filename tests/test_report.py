"""reports/build.py on studies whose experiments did not run: every section degrades to a notice."""

from __future__ import annotations

import json
import re

import pytest

from conftest import PYTHON, run_cli
from reports.build import build_report
from reports.render import Table, mean_sd


def _study(tmp_path, stages):
    (tmp_path / "study.json").write_text(json.dumps({
        "name": "empty", "config": {"dataset": {"subsets": [60, 120]}},
        "provenance": {"git_sha": "abc123", "hardware": {"cpu_count": 2}, "packages": {"torch": "2.13.0"}},
        "stages": stages}))
    return tmp_path


def test_report_of_a_study_that_ran_nothing(tmp_path):
    study = _study(tmp_path, [
        {"name": "clf-real-n60-vgg16", "experiment": "real", "meta": {"subset": 60, "arch": "vgg16"},
         "status": "pending", "run_dir": str(tmp_path / "runs" / "clf-real-n60-vgg16"), "command": "x"},
        {"name": "ddpm-n60", "experiment": "synthetic", "meta": {"subset": 60}, "status": "failed",
         "run_dir": str(tmp_path / "runs" / "ddpm-n60"), "command": "y", "seconds": 1.5},
    ])
    out = build_report(study)
    html = out.read_text()
    for anchor in ("findings", "dataset", "diffusion", "privacy", "classification", "features", "quality", "provenance"):
        assert f'id="{anchor}"' in html
    assert "could not be built" not in html  # absent inputs are notices, not errors
    assert html.count("class=absent") >= 6
    assert "no classifier finished yet" in html and "No findings yet" in html
    assert "abc123" in html and "ddpm-n60" in html  # provenance and the stage table
    assert (study / "summary.md").is_file() and (study / "tables" / "timings.csv").is_file()


def test_report_cli_errors(tmp_path):
    proc = run_cli([PYTHON, "reports/build.py", str(tmp_path)], check=False)
    assert proc.returncode == 2 and "study.json" in proc.stderr and "Traceback" not in proc.stderr


def test_report_imports_no_training_code():
    """reports/ reads files only: importing it must not pull in torch."""
    code = ("import sys; import reports.build, reports.sections, reports.findings, reports.collect; "
            "from reports.build import build_report; assert 'torch' not in sys.modules, 'torch imported'")
    run_cli([PYTHON, "-c", code])


@pytest.mark.parametrize("mean,sd,n,text", [(0.93071, 0.0123, 3, "0.9307 ± 0.0123"), (0.5, 0.0, 1, "0.5000"),
                                            (None, None, 0, "–")])
def test_mean_sd(mean, sd, n, text):
    assert mean_sd(mean, sd, n) == text


def test_table_markdown_and_csv(tmp_path):
    t = Table("t", "T", ["a", "b"], [["x", 0.25], ["y", None]])
    assert "| x | 0.2500 |" in t.to_markdown() and "| y | – |" in t.to_markdown()
    t.write_csv(tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text().splitlines() == ["a,b", "x,0.25", "y,"]
    assert re.search(r"<th>a</th><th>b</th>", t.to_html())


def _clf_run(run, auprc: float, recall: dict[str, float], classes=("A2C", "A4C", "PLAX", "PSAX")):
    """A classifier run dir in classify/train.py's layout with a diagonal-ish confusion matrix."""
    import numpy as np

    cm = np.zeros((len(classes), len(classes)))
    for i, c in enumerate(classes):
        cm[i, i] = recall[c]
        cm[i, (i + 1) % len(classes)] = 1 - recall[c]
    (run / "seed-0").mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"val": {"macro_auprc": {"mean": auprc, "sd": 0.01, "n": 2}}}))
    (run / "seed-0" / "metrics.json").write_text(json.dumps({"val": {
        "macro_auprc": auprc, "classes": list(classes), "confusion_normalized": cm.tolist()}}))


def test_findings_come_from_the_numbers(tmp_path):
    from reports.collect import load_study
    from reports.findings import findings

    split = tmp_path / "data" / "split"
    split.mkdir(parents=True)
    (split / "splits.json").write_text(json.dumps({"subset_counts": {"1000": {"A2C": 89, "A4C": 374, "PLAX": 468, "PSAX": 69}}}))
    real, synth = tmp_path / "runs" / "real", tmp_path / "runs" / "synth"
    _clf_run(real, 0.6409, {"A2C": 0.0, "A4C": 0.9, "PLAX": 0.95, "PSAX": 0.0})
    _clf_run(synth, 0.9307, {"A2C": 0.83, "A4C": 0.9, "PLAX": 0.9, "PSAX": 0.77})
    stage = {"status": "done", "command": ""}
    _study(tmp_path, [
        {**stage, "name": "clf-real-n1000-vgg16", "experiment": "real", "run_dir": str(real),
         "meta": {"subset": 1000, "arch": "vgg16"}},
        {**stage, "name": "clf-synth-n1000-vgg16", "experiment": "synthetic", "run_dir": str(synth),
         "meta": {"subset": 1000, "arch": "vgg16", "filtered": False}},
    ])
    data = json.loads((tmp_path / "study.json").read_text())
    data["config"]["dataset"]["subsets"] = [1000]
    (tmp_path / "study.json").write_text(json.dumps(data))
    text = " ".join(findings(load_study(tmp_path)))
    assert "raised validation macro AUPRC from 0.641 (real) to 0.931 (+0.290)" in text
    assert "PSAX 0.00 → 0.77" in text and "A2C 0.00 → 0.83" in text  # thesis §5.2: the minority views
    assert "synthetic training helped the minority classes" in text
    assert "0.9307 ± 0.0100" in build_report(tmp_path).read_text()  # Table 5.4 cell, mean ± sd
