"""The spot-the-fake survey end to end: build, participant and admin flows, analysis, browser."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from conftest import ARTIFACTS, NO_BROWSER, PYTHON, REPO, chromium_path, run_cli
from echosynth.evaluate.survey.design import (
    IMAGES_DIR,
    KEY_FILE,
    build_survey,
    load_key,
    load_survey,
)
from echosynth.evaluate.survey.store import SurveyStore
from echosynth.gen.data.manifest import (
    data_roots,
    read_manifest,
    rebase,
    write_data_roots,
    write_manifest,
)

APP = str(REPO / "evaluate" / "survey" / "app.py")
PASSWORD = "correct horse battery staple"
BEFORE_ANSWERS = {"occupation": "Specialist", "specialty": "Cardiology", "ultrasound_experience": "Some",
                  "echo_experience": "A little", "expected_difficulty": "Difficult"}


@pytest.fixture(scope="module")
def manifests(split_dir, tmp_path_factory) -> tuple[Path, Path]:
    """Real = the phantom's training split; 'synthetic' = its other splits relabelled."""
    out = tmp_path_factory.mktemp("survey_inputs")
    m = read_manifest(split_dir / "manifest.csv")
    fake = rebase(m.df[m.df["split"] != "train"], split_dir, out)
    fake["source"], fake["split"] = "synthetic", ""
    write_manifest(fake, out / "fake.csv")
    write_data_roots(out, data_roots(split_dir)[0])  # its rows point into the split's phantom data set
    return split_dir / "train.csv", out / "fake.csv"


@pytest.fixture(scope="module")
def survey_dir(manifests, tmp_path_factory) -> Path:
    """A 6-pair survey (A4C + PLAX) for the app flows."""
    out = tmp_path_factory.mktemp("survey") / "s"
    build_survey(*manifests, out, n_pairs=6, seed=1)
    return out


def _fresh_copy(survey_dir: Path, tmp_path: Path) -> Path:
    """A copy of the survey without responses, so that each test starts from an empty store."""
    dst = tmp_path / "survey"
    shutil.copytree(survey_dir, dst, ignore=shutil.ignore_patterns("responses.sqlite*"))
    return dst


def _app(monkeypatch, survey: Path, query: dict | None = None):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ECHOSYNTH_SURVEY_DIR", str(survey))
    at = AppTest.from_file(APP, default_timeout=60)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    return at.run()


def _texts(at) -> str:
    """Every rendered element's protobuf as text: what the browser would receive."""
    out, stack = [], [at._tree]
    while stack:
        node = stack.pop()
        out.append(str(getattr(node, "proto", "")))
        children = getattr(node, "children", None)
        if isinstance(children, dict):
            stack.extend(children.values())
    return "\n".join(out)


def _progress(at) -> str:
    bars = at.get("progress")
    return bars[0].proto.text if bars else ""


def _answer_before(at):
    for q, v in BEFORE_ANSWERS.items():
        at.radio(key=f"before-{q}").set_value(v)
    at.number_input(key="before-years_experience").set_value(12)
    return at.button(key="before-submit").click().run()


def _click(at, side: str, confidence: str | None = None):
    key = next(b.key for b in at.button if b.key and b.key.startswith(f"{side}-"))
    if confidence:
        at.radio(key=f"conf-{key.split('-', 1)[1]}").set_value(confidence)
    return at.button(key=key).click().run()


# ----------------------------------------------------------------------------------------------
# Building


def test_build_cli_pairs_views_and_neutral_names(manifests, tmp_path):
    real, fake = manifests
    out = tmp_path / "s50"
    proc = run_cli([PYTHON, "evaluate/survey/build.py", "--real", str(real), "--fake", str(fake), "--out", str(out),
                    "--pairs", "50", "--views", "A4C,PLAX", "--seed", "3"])
    assert "50 pairs (" in proc.stdout
    survey, key = load_survey(out), load_key(out)
    assert len(survey.pairs) == 50 and sorted(key) == sorted(p.pair_id for p in survey.pairs)
    assert {p.view for p in survey.pairs} == {"A4C", "PLAX"}
    assert sum(p.view == "A4C" for p in survey.pairs) == 25
    names = [n for p in survey.pairs for n in p.images]
    assert len(set(names)) == 100 and all(re.fullmatch(r"[0-9a-f]{24}\.png", n) for n in names)
    assert sorted(os.listdir(out / IMAGES_DIR)) == sorted(names)
    train = read_manifest(real).df
    for p in survey.pairs:
        k = key[p.pair_id]
        assert set(p.images) == {k["real"], k["synthetic"]} and k["view"] == p.view
        assert k["real_source"]["split"] == "train" and k["real_source"]["path"] in set(train["path"])
        assert k["synthetic_source"]["source"] == "synthetic"
    # No image twice, and nothing in the public design or the image files tells the sources apart.
    assert len({key[p]["real_source"]["path"] for p in key}) == 50
    public = json.dumps(json.loads((out / "survey.json").read_text())["pairs"])
    assert not [w for w in ("synthetic", "real", "fake", "tmed2", "train") if w in public]
    from PIL import Image

    for n in names:
        with Image.open(out / IMAGES_DIR / n) as im:
            assert (im.mode, im.size, dict(im.info)) == ("L", (32, 32), {})
    # The stored order within a pair is random (real first in 10..40 of 50: fails with p ≈ 1e-5).
    real_first = sum(p.images[0] == key[p.pair_id]["real"] for p in survey.pairs)
    assert 10 <= real_first <= 40


def test_build_errors_are_actionable(manifests, tmp_path):
    real, fake = manifests
    proc = run_cli([PYTHON, "evaluate/survey/build.py", "--real", str(real), "--fake", str(fake), "--out",
                    str(tmp_path / "x"), "--pairs", "500"], check=False)
    assert proc.returncode == 2 and "lower --pairs" in proc.stderr
    proc = run_cli([PYTHON, "evaluate/survey/build.py", "--real", str(real), "--fake", str(real), "--out",
                    str(tmp_path / "y")], check=False)
    assert proc.returncode == 2 and "no rows with source 'synthetic'" in proc.stderr
    proc = run_cli([PYTHON, "evaluate/survey/build.py", "--real", str(real), "--fake", str(fake), "--out",
                    str(tmp_path / "z"), "--pairz", "5"], check=False)
    assert proc.returncode == 2 and "pairs" in proc.stderr


# ----------------------------------------------------------------------------------------------
# Participant flows (Streamlit AppTest)


def test_participant_answers_all_pairs_without_the_answer_key(survey_dir, tmp_path, monkeypatch):
    survey = _fresh_copy(survey_dir, tmp_path)
    key_text = (survey / KEY_FILE).read_text()
    key = json.loads(key_text)["pairs"]
    (survey / KEY_FILE).unlink()  # the participant pages must work without it
    at = _app(monkeypatch, survey)
    assert at.button(key="start").disabled  # consent first
    at.checkbox(key="consent").check().run()
    at = at.button(key="start").click().run()
    code = at.query_params["code"]
    assert re.fullmatch(r"[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}", code) and code in _texts(at)
    at.button(key="before-submit").click().run()  # unanswered: refused with the missing questions
    assert at.error and "Current occupation" in at.error[0].value
    at = _answer_before(at)
    banned = [n for k in key.values() for n in (k["real"], k["synthetic"])] + \
        [k[s]["path"] for k in key.values() for s in ("real_source", "synthetic_source")] + ["synthetic", "tmed2"]
    for i in range(1, 7):
        assert _progress(at) == f"Pair {i} of 6"
        page = _texts(at)
        assert not [b for b in banned if b in page], "a pair page reveals the answer key"
        urls = [i.url for img in at.get("image") or at.get("imgs") for i in img.proto.imgs]
        assert len(urls) == 2 and all(re.search(r"/media/[0-9a-f]+\.png$", u) for u in urls)
        at = _click(at, "left" if i % 2 else "right", confidence="Sure" if i == 1 else None)
        assert not at.exception
    at.radio(key="after-confidence_overall").set_value("Not so confident")
    at.text_area(key="after-strategy").set_value("tissue smoothness")
    at = at.button(key="after-submit").click().run()
    assert at.header[0].value == "Thank you!"
    store = SurveyStore(survey / "responses.sqlite")
    answers = store.frames()["answers"]
    assert len(answers) == 6 and list(answers["position"]) == list(range(1, 7))
    assert list(answers["choice"]) == ["left", "right"] * 3
    assert answers["confidence"].iloc[0] == 3 and answers["confidence"].iloc[1:].isna().all()
    assert (answers["response_ms"] >= 0).all()
    p = store.participant(code)
    for _, a in answers.iterrows():
        assert [a["left_image"], a["right_image"]] == p.sides[a["pair_id"]]
        assert a["chosen_image"] == (a["left_image"] if a["choice"] == "left" else a["right_image"])
    assert store.questions(code, "after")["strategy"] == "tissue smoothness"
    assert store.questions(code, "before")["years_experience"] in ("12", "12.0")
    assert set(p.pair_order) == set(key)


def test_resume_after_restart(survey_dir, tmp_path, monkeypatch):
    import streamlit as st

    survey = _fresh_copy(survey_dir, tmp_path)
    at = _app(monkeypatch, survey)
    at.checkbox(key="consent").check().run()
    at = _answer_before(at.button(key="start").click().run())
    code = at.query_params["code"]
    at = _click(_click(at, "left"), "right")
    assert _progress(at) == "Pair 3 of 6"
    st.cache_resource.clear()  # a server restart: new sessions, new store objects
    st.cache_data.clear()
    at2 = _app(monkeypatch, survey)  # a new tab without the link: type the code (any case, spaces)
    at2.text_input(key="resume-code").input(code.lower().replace("-", " "))
    at2 = at2.button(key="resume").click().run()
    assert _progress(at2) == "Pair 3 of 6"
    at3 = _app(monkeypatch, survey, {"code": code})  # or reopen the saved link
    assert _progress(at3) == "Pair 3 of 6"
    at4 = _app(monkeypatch, survey)
    at4.text_input(key="resume-code").input("ABCD-EFGH-JKMN")
    at4 = at4.button(key="resume").click().run()
    assert at4.error and "No participant has that code" in at4.error[0].value
    assert len(SurveyStore(survey / "responses.sqlite").frames()["answers"]) == 2


def test_each_participant_gets_own_order_and_sides(survey_dir, tmp_path):
    survey = load_survey(_fresh_copy(survey_dir, tmp_path))
    store = SurveyStore(survey.db_path)
    pairs = {p.pair_id: p.images for p in survey.pairs}
    people = [store.create_participant(list(pairs), pairs) for _ in range(30)]
    assert len({p.pair_order for p in people}) > 20
    left_first = np.mean([p.sides[q][0] == pairs[q][0] for p in people for q in pairs])
    assert 0.35 < left_first < 0.65  # 180 draws of a fair coin


# ----------------------------------------------------------------------------------------------
# Admin page and analysis


def _fill(survey: Path, n_real_picks: list[int], finish: list[bool]) -> list[str]:
    """Participants who pick the real image in their first k pairs and the other one after."""
    s = load_survey(survey)
    key, store = load_key(survey), SurveyStore(s.db_path, s.survey_id)
    pairs = {p.pair_id: p.images for p in s.pairs}
    codes = []
    for i, (k, done) in enumerate(zip(n_real_picks, finish)):
        p = store.create_participant(list(pairs), pairs)
        store.save_questions(p.code, "before", BEFORE_ANSWERS | {"years_experience": 3 + 10 * i,
                                                                  "specialty": ["Cardiology", "Surgery"][i % 2]})
        for j, pid in enumerate(p.pair_order[: len(pairs) if done else 3]):
            real_left = p.sides[pid][0] == key[pid]["real"]
            store.record_answer(p.code, pid, ("left" if real_left else "right") if j < k else
                                ("right" if real_left else "left"), confidence=1 + j % 3, response_ms=1000 + j)
        if done:
            store.save_questions(p.code, "after", {"confidence_overall": "Not so confident", "strategy": f"s{i}"})
        codes.append(p.code)
    return codes


def test_admin_login_and_wrong_password(survey_dir, tmp_path, monkeypatch):
    survey = _fresh_copy(survey_dir, tmp_path)
    _fill(survey, [6, 2], [True, True])
    monkeypatch.delenv("ECHOSYNTH_SURVEY_PASSWORD", raising=False)
    monkeypatch.delenv("ECHOSYNTH_SURVEY_PASSWORD_FILE", raising=False)
    at = _app(monkeypatch, survey, {"view": "results"})
    assert at.error and "No admin password is configured" in at.error[0].value
    monkeypatch.setenv("ECHOSYNTH_SURVEY_PASSWORD", PASSWORD)
    at = _app(monkeypatch, survey, {"view": "results"})
    at.text_input(key="admin-password").input(PASSWORD[:-1])
    at = at.button(key="login-submit").click().run()
    assert at.error[0].value == "Wrong password." and not at.metric and not at.dataframe
    at.text_input(key="admin-password").input(PASSWORD)
    at = at.button(key="login-submit").click().run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Started"] == "2" and metrics["Mean / median score"] == "4.0 / 4.0"
    assert metrics["Pooled accuracy"] == "66.7%"
    # From a file instead (first line, stripped), e.g. on a lab server.
    monkeypatch.delenv("ECHOSYNTH_SURVEY_PASSWORD")
    (tmp_path / "pw.txt").write_text("from-a-file\n")
    monkeypatch.setenv("ECHOSYNTH_SURVEY_PASSWORD_FILE", str(tmp_path / "pw.txt"))
    at = _app(monkeypatch, survey, {"view": "results"})
    at.text_input(key="admin-password").input("from-a-file")
    assert at.button(key="login-submit").click().run().metric


def test_analyze_json_plots_and_csv(survey_dir, tmp_path):
    survey = _fresh_copy(survey_dir, tmp_path)
    _fill(survey, [6, 3, 1], [True, True, False])
    out = tmp_path / "report"
    proc = run_cli([PYTHON, "evaluate/survey/analyze.py", "--survey", str(survey), "--out", str(out)])
    assert "2 participant(s) included (3 started, 2 finished)" in proc.stdout
    res = json.loads((out / "survey_results.json").read_text())
    assert [p["correct"] for p in res["participants"]] == [6, 3]
    assert all("code" not in p for p in res["participants"])  # resume codes stay in the CSV export
    for p in res["participants"]:
        bt = binomtest(p["correct"], 6)
        ci = bt.proportion_ci(method="wilson")
        assert p["p_value"] == pytest.approx(bt.pvalue) and (p["ci_low"], p["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert res["scores"]["mean"] == 4.5 and res["scores"]["median"] == 4.5
    assert (res["pooled"]["correct"], res["pooled"]["n"]) == (9, 12)
    assert res["pooled"]["p_value"] == pytest.approx(binomtest(9, 12).pvalue)
    assert {r["group"]: r["correct"] for r in res["breakdowns"]["specialty"]} == {"Cardiology": 6, "Surgery": 3}
    assert [r["group"] for r in res["breakdowns"]["years_band"]] == ["0–4", "10–19"]
    assert sum(p["n"] for p in res["pairs"]) == 12 and len(res["pairs"]) == 6
    assert res["after"]["confidence_overall"]["Not so confident"] == 2
    assert [s["text"] for s in res["strategies"]] == ["s0", "s1"]
    for name in res["plots"]:
        assert (out / name).stat().st_size > 5000
    assert len(res["plots"]) == 4
    answers = pd.read_csv(out / "answers.csv")
    assert len(answers) == 6 + 6 + 3
    run_cli([PYTHON, "evaluate/survey/analyze.py", "--survey", str(survey), "--out", str(out),
             "--include_unfinished", "true"])
    res = json.loads((out / "survey_results.json").read_text())
    assert res["n_included"] == 3 and res["pooled"]["n"] == 15


# ----------------------------------------------------------------------------------------------
# A real browser against `streamlit run`


class _CDP:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(connect(ws_url, max_size=2**26, open_timeout=30))
        self.next_id = 0

    def close(self) -> None:
        self._stack.close()

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expr: str):
        return self.call("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")

    def wait_for_text(self, text: str, timeout: float = 60) -> str:
        deadline = time.time() + timeout
        body = ""
        while time.time() < deadline:
            body = self.eval("document.body ? document.body.innerText : ''") or ""
            if text in body:
                return body
            time.sleep(0.25)
        raise AssertionError(f"{text!r} did not appear; the page shows:\n{body[:2000]}")

    def wait_idle(self, timeout: float = 60) -> None:
        """Until the script run is over: no running indicator and no stale (being replaced) element."""
        busy = ("!!document.querySelector('[data-testid=\"stStatusWidgetRunningIcon\"]') || "
                "!!document.querySelector('[data-stale=\"true\"]')")
        deadline, quiet = time.time() + timeout, 0
        while time.time() < deadline and quiet < 3:
            quiet = 0 if self.eval(busy) else quiet + 1
            time.sleep(0.2)

    def key(self, key: str, code: int):
        for kind in ("rawKeyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float, proc: subprocess.Popen) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited early ({proc.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read().decode()
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_browser_pair_page_click_and_keyboard(survey_dir, tmp_path):
    pytest.importorskip("websockets.sync.client", reason="the browser test drives Chromium with `websockets`")
    exe = chromium_path()
    if exe is None:
        pytest.skip(NO_BROWSER)
    survey = _fresh_copy(survey_dir, tmp_path)
    s = load_survey(survey)
    store = SurveyStore(s.db_path, s.survey_id)
    pairs = {p.pair_id: p.images for p in s.pairs}
    code = store.create_participant(list(pairs), pairs).code
    store.save_questions(code, "before", BEFORE_ANSWERS | {"years_experience": 4})
    port = _free_port()
    env = {**os.environ, "ECHOSYNTH_SURVEY_PASSWORD": PASSWORD, "PYTHONUNBUFFERED": "1"}
    server = browser = cdp = None
    try:
        server = subprocess.Popen(
            [PYTHON, "-m", "streamlit", "run", APP, "--server.address", "127.0.0.1", "--server.port", str(port),
             "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
             "--client.toolbarMode", "minimal", "--", "--survey", str(survey)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert _wait_http(f"http://127.0.0.1:{port}/_stcore/health", 60, server) == "ok"
        profile = tmp_path / "chromium-profile"
        browser = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             "--window-size=1280,1100", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + 30
        while not (port_file.is_file() and port_file.read_text().strip()) and time.time() < deadline:
            time.sleep(0.2)
        if not port_file.is_file():
            pytest.skip("chromium started but opened no DevTools port (sandboxed environment?)")
        devtools = int(port_file.read_text().split()[0])
        targets = json.loads(_wait_http(f"http://127.0.0.1:{devtools}/json/list", 30, browser))
        cdp = _CDP(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        cdp.call("Page.enable")
        cdp.call("Emulation.setFocusEmulationEnabled", enabled=True)  # headless pages lack focus: keys need it
        cdp.call("Page.navigate", url=f"http://127.0.0.1:{port}/?code={code}")
        cdp.wait_for_text("Pair 1 of 6")
        # Streamlit renders in several passes: wait for the last element (the answer buttons) first.
        cdp.wait_for_text("Right is real")
        body = cdp.wait_for_text(code)  # the resume code is shown below the pair
        assert "Which one is real?" in body and "Left is real" in body and "Right is real" in body
        cdp.wait_idle()
        # The served page names no survey file and nothing from the answer key.
        key = load_key(survey)
        html = cdp.eval("document.documentElement.outerHTML")
        srcs = cdp.eval("[...document.querySelectorAll('img')].map(i => i.getAttribute('src'))")
        banned = [n for k in key.values() for n in (k["real"], k["synthetic"])] + ["synthetic", "answer_key"]
        assert not [b for b in banned if b in html]
        media = [u for u in srcs if "/media/" in u]
        assert len(media) == 2 and all(re.search(r"/media/[0-9a-f]+\.png$", u) for u in media)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = cdp.call("Page.captureScreenshot", format="png")
        (ARTIFACTS / "survey_pair.png").write_bytes(base64.b64decode(shot["data"]))
        # A click on the left button, then the → key.
        cdp.eval("[...document.querySelectorAll('button')].find(b => b.innerText.includes('Left is real')).click()")
        cdp.wait_for_text("Pair 2 of 6")
        cdp.wait_idle()
        cdp.eval("document.activeElement && document.activeElement.blur()")
        # A key pressed while the page is still being replaced is dropped (never misfiled: answers
        # are bound to their pair), so on a loaded CI machine allow a second press.
        for _ in range(3):
            cdp.key("ArrowRight", 39)
            deadline = time.time() + 10
            while len(store.answered(code)) < 2 and time.time() < deadline:
                time.sleep(0.2)
            if len(store.answered(code)) == 2:
                break
        cdp.wait_for_text("Pair 3 of 6", timeout=30)
        answers = store.frames()["answers"]
        assert list(answers["choice"]) == ["left", "right"]
        assert answers["response_ms"].notna().all()
    finally:
        if cdp is not None:
            cdp.close()
        _stop(browser)
        _stop(server)
