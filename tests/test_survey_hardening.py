"""The survey against hostile or careless use: login lockout, injected text, side channels, bad input."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import test_survey_app as survey_tests
from PIL import Image
from test_survey_app import APP, PASSWORD, _answer_before, _fill, _fresh_copy, _texts

from echosynth.evaluate.survey.design import (
    IMAGES_DIR,
    KEY_FILE,
    NEUTRAL_MTIME,
    auc,
    build_survey,
    load_key,
    load_survey,
)
from echosynth.evaluate.survey.store import LOCK_AFTER, SurveyStore, csv_safe, lock_duration
from echosynth.gen.core.io import sha1_file


def build_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """evaluate/survey/build.py's main in this process (a subprocess would spend most of its time importing)."""
    from echosynth.evaluate.survey.build import main

    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err
manifests, survey_dir = survey_tests.manifests, survey_tests.survey_dir  # the same module fixtures


def _app(monkeypatch, survey: Path, query: dict | None = None):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ECHOSYNTH_SURVEY_DIR", str(survey))
    at = AppTest.from_file(APP, default_timeout=300)  # the results page draws matplotlib figures: slow on a busy CI
    for k, v in (query or {}).items():
        at.query_params[k] = v
    return at.run()
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)


# ----------------------------------------------------------------------------------------------
# Admin login lockout


def test_lock_durations_grow_and_are_capped():
    assert [lock_duration(n).total_seconds() for n in range(LOCK_AFTER + 4)] == [0] * LOCK_AFTER + [60, 120, 240, 480]
    assert lock_duration(10_000) == timedelta(hours=24)


def test_lockout_holds_across_store_objects_and_expires(tmp_path):
    db = tmp_path / "responses.sqlite"
    a, b = SurveyStore(db), SurveyStore(db)  # two sessions / server processes on one file
    outcomes = [(a if i % 2 else b).admin_login(lambda: False, at=T0 + timedelta(seconds=i))[0] for i in range(LOCK_AFTER)]
    assert outcomes == ["failed"] * LOCK_AFTER
    # Locked: even the right password is not checked, from either object.
    called = []
    assert a.admin_login(lambda: called.append(1) or True, at=T0 + timedelta(seconds=10))[0] == "locked"
    assert b.admin_lock(at=T0 + timedelta(seconds=10))[0] == timedelta(seconds=LOCK_AFTER - 1 + 60 - 10)
    assert not called
    # After the lock, one more failure locks for twice as long; a success resets the count.
    out, left = a.admin_login(lambda: False, at=T0 + timedelta(seconds=70))
    assert out == "failed" and left == timedelta(minutes=2)
    assert b.admin_login(lambda: True, at=T0 + timedelta(seconds=70 + 121))[0] == "ok"
    assert a.admin_lock(at=T0 + timedelta(seconds=200)) == (timedelta(0), 0)
    log = a.admin_attempts()
    assert log["outcome"].tolist() == ["failed"] * LOCK_AFTER + ["locked", "failed", "ok"]
    assert pd.to_datetime(log["at"]).is_monotonic_increasing
    # Failures older than the window no longer count.
    for i in range(LOCK_AFTER - 1):
        a.admin_login(lambda: False, at=T0 + timedelta(hours=1, seconds=i))
    assert a.admin_lock(at=T0 + timedelta(hours=30))[1] == 0


def test_parallel_guessers_get_exactly_the_allowed_tries(tmp_path):
    store = SurveyStore(tmp_path / "responses.sqlite")
    outcomes, barrier = [], threading.Barrier(40)

    def guess(i):
        s = SurveyStore(tmp_path / "responses.sqlite")
        barrier.wait()
        outcomes.append(s.admin_login(lambda: False)[0])

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("failed") == LOCK_AFTER and outcomes.count("locked") == 40 - LOCK_AFTER
    assert store.admin_login(lambda: True)[0] == "locked"


def test_app_login_locks_after_failures_in_any_session(survey_dir, tmp_path, monkeypatch):
    survey = _fresh_copy(survey_dir, tmp_path)
    _fill(survey, [6], [True])
    monkeypatch.setenv("ECHOSYNTH_SURVEY_PASSWORD", PASSWORD)
    for i in range(LOCK_AFTER):
        at = _app(monkeypatch, survey, {"view": "results"})  # a new browser session each time
        at.text_input(key="admin-password").input(f"guess {i}")
        at = at.button(key="login-submit").click().run()
    assert "locked for 1 minute" in at.error[0].value
    at = _app(monkeypatch, survey, {"view": "results"})
    at.text_input(key="admin-password").input(PASSWORD)
    at = at.button(key="login-submit").click().run()
    assert "Too many failed logins" in at.error[0].value and not at.metric and not at.dataframe
    log = SurveyStore(survey / "responses.sqlite").admin_attempts()
    assert log["outcome"].tolist() == ["failed"] * LOCK_AFTER + ["locked"]


# ----------------------------------------------------------------------------------------------
# Participant text and exports


HOSTILE = "![b](http://attacker.example/beacon.png) [click](javascript:alert(1)) <img src=x onerror=alert(2)>"


def test_strategy_text_is_plain_text_on_the_admin_page(survey_dir, tmp_path, monkeypatch):
    survey = _fresh_copy(survey_dir, tmp_path)
    _fill(survey, [6], [True])
    store = SurveyStore(survey / "responses.sqlite")
    with sqlite3.connect(store.path) as con:
        con.execute("UPDATE questions SET answer = ? WHERE question = 'strategy'", (HOSTILE,))
    monkeypatch.setenv("ECHOSYNTH_SURVEY_PASSWORD", PASSWORD)
    at = _app(monkeypatch, survey, {"view": "results"})
    at.text_input(key="admin-password").input(PASSWORD)
    at = at.button(key="login-submit").click().run()
    assert not at.exception
    assert any(t.value == f"P01: {HOSTILE}" for t in at.text)
    assert not [m for m in at.markdown if "attacker" in m.value or "javascript" in m.value]


def test_csv_exports_neutralise_formulas(survey_dir, tmp_path):
    survey = _fresh_copy(survey_dir, tmp_path)
    _fill(survey, [6], [True])
    store = SurveyStore(survey / "responses.sqlite")
    evil = ['=HYPERLINK("http://x","y")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]
    with sqlite3.connect(store.path) as con:
        con.executemany("INSERT INTO questions VALUES ((SELECT code FROM participants), 'after', ?, ?, 'now')",
                        [(f"q{i}", v) for i, v in enumerate(evil)])
    paths = store.export_csv(tmp_path / "out")
    import csv

    with open(paths["questions"], newline="", encoding="utf-8") as f:
        q = {r["question"]: r["answer"] for r in csv.DictReader(f)}
    assert [q[f"q{i}"] for i in range(len(evil))] == ["'" + v for v in evil]
    assert q["strategy"] == "s0"  # ordinary text untouched
    df = pd.DataFrame({"a": ["=1", "ok", None, "-x"], "n": [-1, 2, 3, 4]})
    safe = csv_safe(df)
    assert safe["a"].tolist()[:2] == ["'=1", "ok"] and pd.isna(safe["a"][2]) and safe["a"][3] == "'-x"
    assert safe["n"].tolist() == [-1, 2, 3, 4]  # numbers are not formulas
    assert "'=HYPERLINK" in store.csv_exports()["questions"]  # the admin page's download buttons


# ----------------------------------------------------------------------------------------------
# Side channels of the built files


def test_pair_images_written_in_random_order_with_one_mtime(manifests, tmp_path, monkeypatch):
    import echosynth.evaluate.survey.design as design

    order = []
    real_save = design.save_png
    monkeypatch.setattr(design, "save_png", lambda p, a: (order.append(Path(p).name), real_save(p, a)))
    out = tmp_path / "s"
    build_survey(*manifests, out, n_pairs=40, seed=2)
    key = load_key(out)
    pos = {n: i for i, n in enumerate(order)}
    real_first = sum(pos[k["real"]] < pos[k["synthetic"]] for k in key.values())
    assert 5 <= real_first <= 35  # a fair coin 40 times: fails with p ≈ 1e-5; real-first builds gave 40
    mtimes = {(out / IMAGES_DIR / n).stat().st_mtime for n in order}
    assert mtimes == {NEUTRAL_MTIME}
    inode_real_first = sum((out / IMAGES_DIR / k["real"]).stat().st_ino < (out / IMAGES_DIR / k["synthetic"]).stat().st_ino
                           for k in key.values())
    assert 0 < inode_real_first < 40


def test_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 20, 30), rng.integers(5, 25, 40)  # with ties
    y = np.r_[np.ones(30), np.zeros(40)]
    assert auc(pos, neg) == pytest.approx(roc_auc_score(y, np.r_[pos, neg]))


def _manifest(folder: Path, images: list[np.ndarray], source: str, view: str = "A4C") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, im in enumerate(images):
        p = folder / f"{i}.png"
        Image.fromarray(im).save(p)
        rows.append({"path": p.name, "view": view, "source": source, "patient_id": f"{source}-{i}",
                     "split": "train" if source != "synthetic" else "", "frame": "", "quality": "", "sha1": sha1_file(p)})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def _smooth_and_noisy(tmp_path, n=6):
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1))
    real = _manifest(tmp_path / "real", [np.roll(ramp, i, 1) for i in range(n)], "tmed2")
    fake = _manifest(tmp_path / "fake", [rng.integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(n)], "synthetic")
    return real, fake


def test_build_reports_file_size_separation(tmp_path, manifests, capsys):
    real, fake = _smooth_and_noisy(tmp_path)
    rc, stdout, stderr = build_cli(["--real", str(real), "--fake", str(fake), "--out", str(tmp_path / "s"),
                    "--pairs", "6", "--views", "A4C"], capsys)
    check = json.loads((tmp_path / "s" / "build.json").read_text())["size_check"]
    assert check["auc_stored"] == 0.0 and check["auc_served"] == 0.0 and check["pairs_real_larger_served"] == 0
    assert "file-size check: AUC 0.00 as served" in stdout and "warning: PNG file size separates" in stderr
    # Sizes recomputed from the files: the stored AUC is the real-vs-synthetic size ranking.
    key = load_key(tmp_path / "s")
    sizes = {s: [(tmp_path / "s" / IMAGES_DIR / k[s]).stat().st_size for k in key.values()] for s in ("real", "synthetic")}
    assert auc(sizes["real"], sizes["synthetic"]) == check["auc_stored"]
    # The warning follows the AUC on any data.
    build_survey(*manifests, tmp_path / "t", n_pairs=20, seed=0)
    check = json.loads((tmp_path / "t" / "build.json").read_text())["size_check"]
    worst = max(abs(check["auc_served"] - 0.5), abs(check["auc_stored"] - 0.5))
    assert (check["warning"] is not None) == (worst > 0.2)


# ----------------------------------------------------------------------------------------------
# Hostile or broken inputs to build.py


def test_build_refuses_outside_paths_and_keeps_none_in_the_key(tmp_path, capsys):
    real, fake = _smooth_and_noisy(tmp_path)
    secret = tmp_path / "outside_secret.png"
    Image.fromarray(np.full((32, 32), 9, np.uint8)).save(secret)
    df = pd.read_csv(fake, dtype=str, keep_default_na=False)
    df.loc[2, "path"] = os.path.relpath(secret, fake.parent)
    df.loc[3, "path"] = str(secret.with_name("outside2.png"))
    Image.fromarray(np.full((32, 32), 8, np.uint8)).save(secret.with_name("outside2.png"))
    df.loc[2, "sha1"], df.loc[3, "sha1"] = sha1_file(secret), sha1_file(secret.with_name("outside2.png"))
    df.to_csv(fake, index=False)
    out = tmp_path / "s"
    rc, stdout, stderr = build_cli(["--real", str(real), "--fake", str(fake), "--out", str(out), "--pairs", "6",
                    "--views", "A4C"], capsys)
    assert rc == 2 and "row 4 (../outside_secret.png): path leaves the manifest's directory" in stderr
    assert "row 5" in stderr and "--allow_outside_paths" in stderr and "Traceback" not in stderr
    assert not (out / IMAGES_DIR).exists()
    assert build_cli(["--real", str(real), "--fake", str(fake), "--out", str(out), "--pairs", "6",
             "--views", "A4C", "--allow_outside_paths", "true"], capsys)[0] == 0
    key_text = (out / KEY_FILE).read_text()
    assert str(tmp_path) not in key_text and "../" not in key_text
    paths = {k["synthetic_source"]["path"] for k in json.loads(key_text)["pairs"].values()}
    assert {"outside_secret.png", "outside2.png", "0.png"} <= paths


def test_build_names_a_changed_file_and_a_text_file_posing_as_png(tmp_path, capsys):
    real, fake = _smooth_and_noisy(tmp_path)
    (fake.parent / "4.png").write_bytes((fake.parent / "5.png").read_bytes())
    rc, stdout, stderr = build_cli(["--real", str(real), "--fake", str(fake), "--out", str(tmp_path / "a"),
                    "--pairs", "6", "--views", "A4C"], capsys)
    assert rc == 2 and "line 6 (4.png): sha1 mismatch" in stderr and "Traceback" not in stderr
    (fake.parent / "4.png").write_text("this is not an image\n")
    df = pd.read_csv(fake, dtype=str, keep_default_na=False)
    df.loc[4, "sha1"] = sha1_file(fake.parent / "4.png")
    df.to_csv(fake, index=False)
    rc, stdout, stderr = build_cli(["--real", str(real), "--fake", str(fake), "--out", str(tmp_path / "b"),
                    "--pairs", "6", "--views", "A4C"], capsys)
    assert rc == 2 and "Traceback" not in stderr
    assert "manifest.csv: line 6 (4.png): cannot use this image" in stderr and "fix or replace the file" in stderr


def test_survey_inside_a_git_tree_warns_unless_ignored(tmp_path, capsys):
    real, fake = _smooth_and_noisy(tmp_path)
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    args = ["--real", str(real), "--fake", str(fake), "--pairs", "6", "--views", "A4C"]
    rc, stdout, stderr = build_cli([*args, "--out", str(repo / "surveys" / "a")], capsys)
    assert "warning:" in stderr and "not ignored" in stderr and "git add" in stderr
    (repo / ".gitignore").write_text("/surveys/\n")
    rc, stdout, stderr = build_cli([*args, "--out", str(repo / "surveys" / "b")], capsys)
    assert "not ignored" not in stderr
    rc, stdout, stderr = build_cli([*args, "--out", str(tmp_path / "elsewhere")], capsys)  # not in any work tree
    assert "not ignored" not in stderr


# ----------------------------------------------------------------------------------------------
# Failures participants may meet


def _assert_neutral(at, survey: Path):
    assert not at.exception
    assert [e.value for e in at.error] == [
        "Sorry, the survey is not available at the moment. Please tell the study team and try again later; "
        "answers you have already given are saved."]
    assert str(survey) not in _texts(at) and "Traceback" not in _texts(at)


def test_corrupt_database_shows_a_neutral_page_and_logs(survey_dir, tmp_path, monkeypatch, caplog):
    survey = _fresh_copy(survey_dir, tmp_path)
    (survey / "responses.sqlite").write_bytes(b"this is not a database" * 100)
    with caplog.at_level("ERROR", logger="echosynth.survey"):
        at = _app(monkeypatch, survey)
    _assert_neutral(at, survey)
    ref = at.caption[0].value.removeprefix("Reference: ")
    assert any(ref in r.getMessage() and r.exc_info for r in caplog.records)


def test_missing_pair_image_shows_a_neutral_page(survey_dir, tmp_path, monkeypatch):
    survey = _fresh_copy(survey_dir, tmp_path)
    at = _app(monkeypatch, survey)
    at.checkbox(key="consent").check().run()
    at = at.button(key="start").click().run()
    for p in load_survey(survey).pairs:
        for name in p.images:
            (survey / IMAGES_DIR / name).unlink()  # removed while the server runs
    at = _answer_before(at)
    _assert_neutral(at, survey)
    again = _fresh_copy(survey, tmp_path / "again")
    at = _app(monkeypatch, again)  # missing when the server starts: also neutral
    _assert_neutral(at, again)
