"""reports/build.py on studies whose experiments did not run: every section degrades to a notice."""

from __future__ import annotations

import json
import re

import pytest

from conftest import PYTHON, run_cli
from echosynth.evaluate.gate import GateConfig, gate_verdict
from echosynth.reports.build import build_report
from echosynth.reports.render import Table, mean_sd


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
    code = ("import sys; import echosynth.reports.build, echosynth.reports.sections, echosynth.reports.findings, echosynth.reports.collect; "
            "from echosynth.reports.build import build_report; assert 'torch' not in sys.modules, 'torch imported'")
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
    entry = {"macro_auprc": {"mean": auprc, "sd": 0.01, "n": 2}}
    (run / "summary.json").write_text(json.dumps({"val": entry, "test": entry}))
    scored = {"macro_auprc": auprc, "classes": list(classes), "confusion_normalized": cm.tolist()}
    (run / "seed-0" / "metrics.json").write_text(json.dumps({"val": scored, "test": scored}))


def test_findings_come_from_the_numbers(tmp_path):
    from echosynth.reports.collect import load_study
    from echosynth.reports.findings import findings

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
    found = findings(load_study(tmp_path))
    text = " ".join(f.text for f in found)
    # on test (validation selected the checkpoints); no saved predictions, so no interval and no verdict
    assert "test macro AUPRC real 0.641 vs synthetic 0.931: difference +0.290 (no interval: no saved predictions " \
           "on test): no clear difference" in text
    assert "minority-class recall on test" in text
    assert "PSAX 0.00 → 0.77" in text and "A2C 0.00 → 0.83" in text  # thesis §5.2: the minority views
    assert "no saved predictions, so no interval: not called a gain or a loss" in text
    assert all(f.rests_on == [1000] for f in found)
    html = build_report(tmp_path).read_text()
    assert "0.9307 ± 0.0100" in html  # Table 5.4 cell (validation, labelled so), mean ± sd
    assert "Validation selected each run&#x27;s checkpoint" in html
    # no fidelity stage: the set was never verified, so nothing resting on it is evidence
    assert html.count("Rests on an unusable generator") == len(found)
    assert "not testable" in html


# ----------------------------------------------------------------------------------------------
# Uncertainty of comparisons


def test_weighted_average_precision_matches_sklearn_with_ties_and_duplicates():
    import numpy as np
    from sklearn.metrics import average_precision_score

    from echosynth.reports.compare import weighted_ap

    rng = np.random.default_rng(0)
    y = rng.random(60) < 0.3
    score = np.round(rng.random(60), 1)  # many ties
    w = rng.integers(0, 4, (5, 60))
    w[:, np.flatnonzero(y)[0]] += 1  # at least one positive in each row
    ap = weighted_ap(y, score, np.vstack([np.ones(60), w]))
    assert ap[0] == pytest.approx(average_precision_score(y, score))
    for row, a in zip(w, ap[1:]):  # integer weights = duplicated rows
        idx = np.repeat(np.arange(60), row)
        assert a == pytest.approx(average_precision_score(y[idx], score[idx]))


def _pred_run(run, probs, labels, classes=("A2C", "A4C", "PLAX", "PSAX"), seeds=(0,)):
    """A classifier run with predictions_val.csv and predictions_test.csv per seed (the same numbers) and a
    summary of the macro AUPRC; no `training` record, as runs before it: best checkpoint on val."""
    import numpy as np
    import pandas as pd
    from sklearn.metrics import average_precision_score

    aps = np.mean([average_precision_score(labels == c, probs[:, c]) for c in range(len(classes))])
    for s in seeds:
        d = run / f"seed-{s}"
        d.mkdir(parents=True)
        df = pd.DataFrame({"path": [f"img{i}.png" for i in range(len(labels))], "label": [classes[i] for i in labels]})
        for i, c in enumerate(classes):
            df[f"prob_{c}"] = probs[:, i]
        df.to_csv(d / "predictions_val.csv", index=False)
        df.to_csv(d / "predictions_test.csv", index=False)
        (d / "metrics.json").write_text(json.dumps({"val": {"macro_auprc": aps}, "test": {"macro_auprc": aps}}))
    entry = {"macro_auprc": {"mean": aps, "sd": 0.0, "n": len(seeds)}}
    (run / "summary.json").write_text(json.dumps({"val": entry, "test": entry}))
    return aps


def test_differences_within_their_uncertainty_are_no_clear_difference(tmp_path):
    import numpy as np

    from echosynth.reports.compare import compare_runs

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 30)
    base = rng.random((120, 4)) + 0.35 * np.eye(4)[labels]
    a = _pred_run(tmp_path / "a", base, labels)
    b = _pred_run(tmp_path / "b", base + rng.normal(0, 0.05, base.shape), labels)  # same model, a little jitter
    c = _pred_run(tmp_path / "c", 0.1 * rng.random((120, 4)) + np.eye(4)[labels], labels)  # a far better model
    d = compare_runs(tmp_path / "a", tmp_path / "b")
    assert d.a == pytest.approx(a) and d.b == pytest.approx(b)
    assert abs(d.delta) < max(-d.lo, d.hi) and d.verdict == "no clear difference"
    assert d.eval_set == "test"  # validation selected the checkpoints
    assert ("nested bootstrap: 1 and 1 seeds × the same 120 test images (A2C 30, A4C 30, PLAX 30, PSAX 30)): "
            "no clear difference") in d.text()
    assert compare_runs(tmp_path / "a", tmp_path / "c").verdict == "gain" and c == pytest.approx(1.0)
    assert compare_runs(tmp_path / "c", tmp_path / "a").verdict == "loss"


def test_nested_interval_matches_a_hand_computation():
    """Toy case: 2 and 3 seeds on 7 shared images, 200 resamples, recomputed with loops and sklearn."""
    import numpy as np
    from sklearn.metrics import average_precision_score, balanced_accuracy_score

    from echosynth.reports.compare import Predictions, _stat, nested_bootstrap

    rng = np.random.default_rng(5)
    labels = np.array([0, 0, 0, 1, 1, 2, 2])
    paths = np.array([f"i{i}" for i in range(7)])
    arms = [[Predictions(paths, labels, rng.dirichlet(np.ones(3), 7), ["a", "b", "c"]) for _ in range(s)] for s in (2, 3)]
    for metric in ("macro_auprc", "balanced_accuracy"):
        points, values = nested_bootstrap(_stat(metric), arms, n_boot=200, seed=11)
        draw = np.random.default_rng(11)  # the documented order: image rows, then each arm's seed indices
        w = draw.multinomial(7, np.full(7, 1 / 7), size=200)
        idx = [draw.integers(0, len(a), size=(200, len(a))) for a in arms]

        def score(p, rows, metric=metric):
            y, prob = p.labels[rows], p.probs[rows]
            if metric == "balanced_accuracy":
                return balanced_accuracy_score(y, prob.argmax(1))
            return np.mean([average_precision_score(y == c, prob[:, c]) for c in sorted(set(y))])

        for j, arm in enumerate(arms):
            assert points[j] == pytest.approx(np.mean([score(p, np.arange(7)) for p in arm]))
            for b in range(200):
                rows = np.repeat(np.arange(7), w[b])
                assert values[b, j] == pytest.approx(np.mean([score(arm[i], rows) for i in idx[j][b]])), (metric, b, j)


def test_identical_seeds_give_no_spread_and_differing_seeds_widen_the_interval(tmp_path):
    import numpy as np
    import pandas as pd

    from echosynth.reports.compare import compare_runs

    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(4), 50)
    base = rng.random((200, 4)) + 0.5 * np.eye(4)[labels]
    _pred_run(tmp_path / "a", base, labels, seeds=(0, 1, 2))
    _pred_run(tmp_path / "b", base, labels, seeds=(0, 1, 2))
    same = compare_runs(tmp_path / "a", tmp_path / "b")
    assert same.delta == 0 and same.lo == same.hi == 0  # identical seeds on shared images: no spread at all
    for i, s in enumerate((0, 1, 2)):  # seeds that differ a lot: the interval must show it
        df_path = tmp_path / "b" / f"seed-{s}" / "predictions_test.csv"
        df = pd.read_csv(df_path)
        noisy = base + (i + 1) * rng.random((200, 4))
        for c, name in enumerate(("A2C", "A4C", "PLAX", "PSAX")):
            df[f"prob_{name}"] = noisy[:, c]
        df.to_csv(df_path, index=False)
    spread = compare_runs(tmp_path / "a", tmp_path / "b")
    assert spread.hi - spread.lo > 0.02 and "3 and 3 seeds × the same 200 test images" in spread.text()


def test_findings_never_report_the_split_that_selected_the_checkpoint(tmp_path):
    import numpy as np

    from echosynth.reports.collect import load_study
    from echosynth.reports.compare import SelectionLeak, compare_runs, findings_split
    from echosynth.reports.findings import findings

    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(4), 30)
    runs = tmp_path / "runs"
    _pred_run(runs / "real", rng.random((120, 4)) + 0.3 * np.eye(4)[labels], labels)
    _pred_run(runs / "synth", rng.random((120, 4)) + 0.4 * np.eye(4)[labels], labels)
    stage = {"status": "done", "command": ""}
    _study(tmp_path, [
        {**stage, "name": "clf-real-n60-resnet18", "experiment": "real", "run_dir": str(runs / "real"),
         "meta": {"subset": 60, "arch": "resnet18"}},
        {**stage, "name": "clf-synth-n60-resnet18", "experiment": "synthetic", "run_dir": str(runs / "synth"),
         "meta": {"subset": 60, "arch": "resnet18", "filtered": False}}])
    with pytest.raises(SelectionLeak, match="selected on 'val'"):
        compare_runs(runs / "real", runs / "synth", "val")
    assert findings_split(runs / "real", runs / "synth") == "test"
    texts = [f.text for f in findings(load_study(tmp_path)) if "synthetic set vs only on the real" in f.text]
    assert len(texts) == 1 and "test macro AUPRC" in texts[0] and "validation" not in texts[0]
    # a run whose checkpoint test selected (its --val was the test split): no split is left for a finding
    for run, split in ((runs / "synth", "test"), (runs / "real", "val")):
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "training": {"selected_on": split}}))
    assert findings_split(runs / "real", runs / "synth") is None
    assert not [f for f in findings(load_study(tmp_path)) if "synthetic set vs only on the real" in f.text]
    # kept the last checkpoint: nothing selected it, and test is still preferred
    for run in (runs / "real", runs / "synth"):
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "training": {"selected_on": None, "checkpoint": "last"}}))
    assert findings_split(runs / "real", runs / "synth") == "test"
    assert compare_runs(runs / "real", runs / "synth", "val").eval_set == "val"  # allowed: val picked nothing


def test_from_scratch_vs_frozen_imagenet_features_finding(tmp_path):
    """Thesis Table 5.3: the direction is stated from the two runs' numbers and their interval."""
    import numpy as np

    from echosynth.reports.collect import load_study
    from echosynth.reports.findings import findings

    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(4), 30)
    _pred_run(tmp_path / "runs" / "scratch", 0.1 * rng.random((120, 4)) + np.eye(4)[labels], labels)  # near perfect
    _pred_run(tmp_path / "runs" / "frozen", rng.random((120, 4)) + 0.3 * np.eye(4)[labels], labels)
    stage = {"status": "done", "command": "", "experiment": "real"}
    _study(tmp_path, [
        {**stage, "name": "clf-real-n60-resnet18", "run_dir": str(tmp_path / "runs" / "scratch"),
         "meta": {"subset": 60, "arch": "resnet18"}},
        {**stage, "name": "clf-real-n60-fid_inception_frozen", "run_dir": str(tmp_path / "runs" / "frozen"),
         "meta": {"subset": 60, "arch": "fid_inception_frozen"}},
    ])
    texts = [f.text for f in findings(load_study(tmp_path)) if "frozen ImageNet" in f.text]
    assert len(texts) == 1, texts
    assert "60 real images" in texts[0] and "resnet18 from scratch" in texts[0]
    assert texts[0].endswith("training from scratch did better.")  # the frozen run is clearly worse here


# ----------------------------------------------------------------------------------------------
# The quality gate in the report


def _gated_study(tmp_path, fidelity: dict, report_status: str = "running"):
    """A study with real/synthetic classifiers (predictions saved), a fidelity result and the report stage."""
    import numpy as np

    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(4), 25)
    split = tmp_path / "data" / "split"
    split.mkdir(parents=True)
    (split / "splits.json").write_text(json.dumps({"subset_counts": {"60": {"A2C": 6, "A4C": 24, "PLAX": 26, "PSAX": 4}}}))
    runs = tmp_path / "runs"
    _pred_run(runs / "real", rng.random((100, 4)) + 0.3 * np.eye(4)[labels], labels)
    _pred_run(runs / "synth", rng.random((100, 4)) + 0.32 * np.eye(4)[labels], labels)
    (runs / "fid").mkdir(parents=True)
    (runs / "fid" / "fidelity.json").write_text(json.dumps(fidelity))
    st = {"status": "done", "command": ""}
    stages = [
        {**st, "name": "clf-real-n60-vgg16", "experiment": "real", "run_dir": str(runs / "real"),
         "meta": {"subset": 60, "arch": "vgg16"}},
        {**st, "name": "sample-n60", "experiment": "synthetic", "run_dir": str(runs / "sample"), "meta": {"subset": 60}},
        {**st, "name": "fidelity-n60", "experiment": "synthetic", "run_dir": str(runs / "fid"), "meta": {"subset": 60}},
        {**st, "name": "clf-synth-n60-vgg16", "experiment": "synthetic", "run_dir": str(runs / "synth"),
         "meta": {"subset": 60, "arch": "vgg16", "filtered": False}},
        {"name": "report", "experiment": "report", "status": report_status, "run_dir": str(tmp_path / "report"),
         "command": ""}]
    _study(tmp_path, stages)
    data = json.loads((tmp_path / "study.json").read_text())
    data["config"] = {"dataset": {"subsets": [60]}}
    (tmp_path / "study.json").write_text(json.dumps(data))
    return tmp_path


NOISE = {"metrics": {"echo": {"overall": {"fake": {"fid": 3213.0}, "floor": {"fid": 79.0},
                                          "fake_at_floor_n": {"fid": 3100.0}, "n_floor": 80}}},
         "class_fidelity": {"ratio": 0.087, "ratio_ci": [0.0, 0.2], "acc_syn": 0.315, "bacc_real": 1.0, "chance": 0.25},
         "sector_fidelity": {"outside_mean_fake": 54.0, "outside_mean_real": 0.0}}
GOOD = {"metrics": {"echo": {"overall": {"fake": {"fid": 150.0}, "floor": {"fid": 79.0},
                                         "fake_at_floor_n": {"fid": 120.0}, "n_floor": 80}}},
        "class_fidelity": {"ratio": 0.93, "ratio_ci": [0.85, 1.0], "acc_syn": 0.95, "bacc_real": 1.0, "chance": 0.25},
        "sector_fidelity": {"outside_mean_fake": 1.0, "outside_mean_real": 0.0}}


def _scored(fid: dict, **thresholds) -> dict:
    """A fidelity.json as evaluate/fidelity.py writes it: the numbers and the gate's verdict on them."""
    return {**fid, "gate": gate_verdict(fid, GateConfig(**thresholds))}


def test_report_gate_box_marks_every_finding_on_a_failed_set(tmp_path):
    html = build_report(_gated_study(tmp_path, _scored(NOISE))).read_text()
    box = re.search(r"<div class=gate-fail role=alert>(.*?)</div>", html, re.S)
    assert box and "1 of 1 synthetic sets are unusable" in box.group(1) and "sample-n60" in box.group(1)
    assert "above-chance ratio 0.087 (need ≥ 0.5" in box.group(1) and "3100.0 with echo features" in box.group(1)
    assert "outside-sector mean 54.0/255" in box.group(1)
    assert html.index("gate-fail") < html.index("<ul class=findings>")  # at the top of Findings
    items = re.findall(r"<li( class=unusable)?>(.*?)</li>", re.search(r"<ul class=findings>(.*?)</ul>", html, re.S).group(1))
    resting = [t for cls, t in items if "synthetic" in t and "FID of each" not in t]
    assert resting and all("Rests on an unusable generator" in t and "not evidence" in t for t in resting)
    assert "sample-n60 failed the quality gate" in html
    directions = re.search(r"Thesis directions at the smallest real subset</h3><ul class=findings>(.*?)</ul>", html, re.S)
    assert directions and directions.group(1).count("dir-not-testable") == 2  # synthetic-only, minority recall
    assert directions.group(1).count("dir-not-run") == 2  # no mixing, no upsampling runs in this study
    assert "all 5 stages finished" in html and "running" not in re.search(r"class=sub>(.*?)</div>", html).group(1)
    assert "gate" in (tmp_path / "tables" / "fidelity.csv").read_text().splitlines()[0]


def test_report_gate_passes_a_good_set_and_findings_carry_uncertainty(tmp_path):
    html = build_report(_gated_study(tmp_path, _scored(GOOD))).read_text()
    assert "<div class=gate-pass>" in html and "<div class=gate-fail" not in html
    assert "Rests on an unusable generator" not in html
    findings_html = re.search(r"<ul class=findings>(.*?)</ul>", html, re.S).group(1)
    # nearly identical real and synthetic classifiers: within the bootstrap interval
    assert "nested bootstrap: 1 and 1 seeds × the same 100 test images (A2C 25, A4C 25, PLAX 25, PSAX 25)): " \
           "no clear difference" in findings_html
    assert "not reproduced" in html


def test_report_shows_the_verdict_fidelity_json_carries_under_its_thresholds(tmp_path):
    """The report re-judges nothing: the noise set passes under the thresholds its fidelity run was given."""
    lax = {"min_class_ratio": 0.05, "max_fid_over_floor": 100.0, "outside_factor": 1.0, "outside_margin": 60.0}
    html = build_report(_gated_study(tmp_path, _scored(NOISE, **lax))).read_text()
    box = re.search(r"<div class=gate-pass>(.*?)</div>", html, re.S)
    assert box and "above-chance class ratio ≥ 0.05, FID ≤ 100.0 × the real-vs-real floor" in box.group(1)
    assert "outside-sector mean ≤ 1.0 × real + 60.0/255" in box.group(1)
    assert "<div class=gate-fail" not in html and "Rests on an unusable generator" not in html
    assert (tmp_path / "tables" / "fidelity.csv").read_text().splitlines()[1].endswith(",pass")


def test_report_marks_a_fidelity_json_without_a_verdict_unverified(tmp_path):
    """A fidelity run from before the gate moved into fidelity.py: unverified, with what to do."""
    html = build_report(_gated_study(tmp_path, GOOD)).read_text()  # good numbers, but no `gate` key
    box = re.search(r"<div class=gate-fail role=alert>(.*?)</div>", html, re.S)
    assert box and "1 of 1 synthetic sets are unusable" in box.group(1) and "UNVERIFIED" in box.group(1)
    assert "no quality-gate verdict" in box.group(1) and "re-run the fidelity stage" in box.group(1)
    assert "Gate: the study&#x27;s gate thresholds." in box.group(1)  # no verdict, so no thresholds to show
    assert "sample-n60 was not verified by the quality gate" in html
    assert (tmp_path / "tables" / "fidelity.csv").read_text().splitlines()[1].endswith(",unverified")
    summary = (tmp_path / "summary.md").read_text()
    assert "**sample-n60 UNVERIFIED** the quality gate: its fidelity.json holds no quality-gate verdict" in summary


def test_report_gate_box_renders_in_chromium(tmp_path):
    import numpy as np
    from PIL import Image

    from conftest import ARTIFACTS, chromium_screenshot

    out = build_report(_gated_study(tmp_path, _scored(NOISE)))
    png = ARTIFACTS / "report_gate.png"
    chromium_screenshot(out.resolve().as_uri(), png, width=1200, height=900)
    with Image.open(png) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    red = (abs(rgb[..., 0] - 0xc6) < 12) & (abs(rgb[..., 1] - 0x28) < 12) & (abs(rgb[..., 2] - 0x28) < 12)
    assert red.sum() > 500, "the gate box's red border is not on the first screen"
