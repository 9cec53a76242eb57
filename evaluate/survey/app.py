"""The clinicians' spot-the-fake survey (Streamlit).

    ECHOSYNTH_SURVEY_PASSWORD=... streamlit run evaluate/survey/app.py -- --survey SURVEY_DIR

Participants: welcome and consent, a resume code, questions before, the pairs (random order and
sides per participant, "which one is real?"), questions after. Study team: `?view=results`
behind the admin password. The participant pages never read the answer key, and images are
rendered from bytes, so nothing served tells real from synthetic.

Hardening: the admin login locks after repeated failures (stored in responses.sqlite, so it
holds across sessions); participant text is shown as plain text; CSV exports neutralise
spreadsheet formulas; any failure (a corrupt database, a missing image) shows a neutral page
and logs the details with a reference, never a traceback with server paths.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from echosynth.evaluate.survey.auth import (
    PASSWORD_ENV,
    PASSWORD_FILE_ENV,
    admin_password,
    check_password,
)
from echosynth.evaluate.survey.design import FILTERS, Survey, load_survey, upscale_png
from echosynth.evaluate.survey.questions import AFTER, BEFORE, PAIR_CONFIDENCE, Question
from echosynth.evaluate.survey.results import figures, survey_results
from echosynth.evaluate.survey.store import SurveyStore, normalize_code
from echosynth.gen.core.config import ConfigError, build, field
from echosynth.gen.core.io import warn_if_tracked

SURVEY_ENV = "ECHOSYNTH_SURVEY_DIR"
log = logging.getLogger("echosynth.survey")
UNAVAILABLE = ("Sorry, the survey is not available at the moment. Please tell the study team and try again "
               "later; answers you have already given are saved.")
CONSENT = """This survey is part of a research study on synthetic (computer-generated) echocardiograms.
You will see pairs of still echocardiogram frames of the same view. In each pair one image is
real and one is synthetic; pick the one you think is real. It takes about 10–15 minutes.

Your answers are stored without your name. We ask about your occupation, specialty and
experience only to compare groups. You can stop at any time; with your participant code you
can come back later and continue where you left off. Answers already given cannot be changed."""

CSS = """<style>
[data-testid="stMainBlockContainer"] { padding-top: 1.5rem; }
button[kind] { min-height: 3.4rem; font-size: 1.2rem !important; }
div[role="radiogroup"] label { padding: 0.35rem 0.6rem; font-size: 1.1rem; }
</style>"""

# Older Streamlit has no `shortcut=` on buttons: a same-origin component clicks them instead.
_NATIVE_SHORTCUTS = "shortcut" in inspect.signature(st.button).parameters
_KEYS_JS = """<script>
const doc = window.parent.document;
if (!doc.__echosynthKeys) { doc.__echosynthKeys = true;
  doc.addEventListener('keydown', e => {
    if (['INPUT', 'TEXTAREA'].includes((e.target.tagName || '').toUpperCase())) return;
    const want = {ArrowLeft: 'Left is real', ArrowRight: 'Right is real'}[e.key];
    if (!want) return;
    const b = [...doc.querySelectorAll('button')].find(x => x.innerText.includes(want));
    if (b) { e.preventDefault(); b.click(); }
  });
}</script>"""


@dataclass
class AppConfig:
    """Options of the survey app (after `--` on the streamlit command line)."""

    survey: str = field("", help=f"survey directory from build.py (or ${SURVEY_ENV})")
    display_px: int = field(384, min=64, max=2048, help="pair images are upscaled to and shown at this many "
                            "pixels (smaller when the screen is narrower)")
    filter: str = field("lanczos", choices=FILTERS, help="upscaling filter, the same for both sides")
    admin_password_file: str = field("", help=f"file holding the admin password (${PASSWORD_ENV} wins)")


def _config() -> AppConfig:
    # `streamlit run app.py -- ARGS` sets sys.argv = [app.py, ARGS]; under AppTest argv is pytest's.
    argv = sys.argv[1:] if Path(sys.argv[0]).name == Path(__file__).name else []
    pairs = dict(zip(argv[::2], argv[1::2]))
    if len(argv) % 2 or any(not k.startswith("--") for k in pairs):
        raise ConfigError(f"expected --key value pairs after `--`, got {' '.join(argv)}")
    overrides = {k[2:].replace("-", "_"): v for k, v in pairs.items()}
    overrides.setdefault("survey", os.environ.get(SURVEY_ENV, ""))
    cfg = build(AppConfig, overrides=overrides)
    if not cfg.survey:
        raise ConfigError(f"no survey given: run `streamlit run evaluate/survey/app.py -- --survey DIR` or set ${SURVEY_ENV}")
    return cfg


@st.cache_resource
def _open(root: str) -> tuple[Survey, SurveyStore]:
    survey = load_survey(root)
    warn_if_tracked(survey.root, "survey with its answer key and responses.sqlite", "survey app")  # server log, once
    return survey, SurveyStore(survey.db_path, survey.survey_id)


@st.cache_data(max_entries=512)
def _display_png(root: str, name: str, px: int, filt: str) -> bytes:
    survey, _ = _open(root)
    return upscale_png(survey.image_bytes(name), px, filt)


# ----------------------------------------------------------------------------------------------
# Participant pages


def welcome(survey: Survey, store: SurveyStore) -> None:
    """Consent and start, or continue with a code."""
    st.title(survey.title)
    consent = survey.root / "consent.md"
    st.markdown(consent.read_text(encoding="utf-8") if consent.is_file() else CONSENT)
    agreed = st.checkbox("I have read the above and agree to take part.", key="consent")
    if st.button("Start the survey", key="start", type="primary", disabled=not agreed, width="stretch"):
        pairs = {p.pair_id: p.images for p in survey.pairs}
        st.session_state.code = store.create_participant(list(pairs), pairs).code
        st.rerun()
    st.divider()
    st.subheader("Continue where you left off")
    typed = st.text_input("Your participant code", key="resume-code", placeholder="e.g. K7QM-3XTA-PZ9W")
    if st.button("Continue", key="resume", width="stretch"):
        code = normalize_code(typed)
        if code and store.participant(code):
            st.session_state.code = code
            st.rerun()
        st.error("No participant has that code. Check it: 12 letters and digits, as shown when you started.")
    st.caption("[Study team: results](?view=results)")


def questionnaire(store: SurveyStore, code: str, phase: str, questions: tuple[Question, ...]) -> None:
    """The questions before or after the pairs, stored in one transaction on submit."""
    st.header("Before we start: about you" if phase == "before" else "Almost done")
    with st.form(f"{phase}-form"):
        for q in questions:
            k = f"{phase}-{q.key}"
            if q.kind == "choice":
                st.radio(q.label, q.options, index=None, key=k)
            elif q.kind == "number":
                st.number_input(q.label, min_value=0, max_value=70, step=1, value=None, key=k)
            else:
                st.text_area(q.label + " (optional)", key=k, max_chars=4000)
        submitted = st.form_submit_button("Continue", key=f"{phase}-submit", type="primary", width="stretch")
    if submitted:
        answers = {q.key: st.session_state.get(f"{phase}-{q.key}") for q in questions}
        missing = [q.label for q in questions if q.required and answers[q.key] in (None, "")]
        if missing:
            st.error("Please answer: " + "; ".join(missing))
            return
        store.save_questions(code, phase, answers)
        st.rerun()


def _answer(store: SurveyStore, code: str, pair_id: str, choice: str) -> None:
    shown = st.session_state.get("shown", {}).get(pair_id)
    conf = st.session_state.get(f"conf-{pair_id}")
    try:
        store.record_answer(code, pair_id, choice,
                            confidence=PAIR_CONFIDENCE.index(conf) + 1 if conf in PAIR_CONFIDENCE else None,
                            response_ms=int((time.monotonic() - shown) * 1000) if shown else None)
    except Exception:  # a callback's exception would reach the page as a traceback
        st.session_state.failed = _log_failure(f"saving an answer to {pair_id}")


def _log_failure(what: str) -> str:
    """Log the current exception with a short reference that the neutral page shows."""
    ref = secrets.token_hex(4)
    log.error("survey failure [ref %s] while %s", ref, what, exc_info=True)
    return ref


def unavailable(ref: str) -> None:
    """The neutral error page: no paths, no traceback; the reference points to the server log."""
    st.title("Survey unavailable")
    st.error(UNAVAILABLE)
    st.caption(f"Reference: {ref}")


def pair_page(cfg: AppConfig, survey: Survey, store: SurveyStore, code: str, order: tuple[str, ...],
              sides: dict[str, list[str]], answered: set[str]) -> None:
    """One pair: two images, optional confidence, two large buttons (← / → on a keyboard)."""
    remaining = [p for p in order if p not in answered]
    pair_id, position = remaining[0], len(order) - len(remaining) + 1
    st.session_state.setdefault("shown", {}).setdefault(pair_id, time.monotonic())
    st.progress(position / len(order), text=f"Pair {position} of {len(order)}")
    st.subheader("Which one is real?")
    left, right = sides[pair_id]
    # Both images first: a missing or broken file fails before anything of the page is drawn.
    shown = {name: _display_png(str(survey.root), name, cfg.display_px, cfg.filter) for name in (left, right)}
    st.radio("How sure are you? (optional, before you pick)", PAIR_CONFIDENCE, index=None, horizontal=True,
             key=f"conf-{pair_id}")
    # Each image with its button right below it: one tap target per image, all on one tablet screen.
    cols = st.columns(2, gap="medium")
    for col, name, side in ((cols[0], left, "left"), (cols[1], right, "right")):
        col.image(shown[name], width=cfg.display_px, output_format="PNG")  # PNG: no JPEG artefacts on either side
        extra = {"shortcut": side.capitalize()} if _NATIVE_SHORTCUTS else {}
        col.button(f"{side.capitalize()} is real", key=f"{side}-{pair_id}", type="primary", width=cfg.display_px,
                   on_click=_answer, args=(store, code, pair_id, side), **extra)
    st.caption("Keyboard: ← picks the left image, → the right one. Your answer is saved at once.")
    if not _NATIVE_SHORTCUTS:
        import streamlit.components.v1 as components

        components.html(_KEYS_JS, height=0)


def participant(cfg: AppConfig, survey: Survey, store: SurveyStore) -> None:
    """Route a participant to the page their stored progress calls for."""
    code = st.session_state.get("code") or normalize_code(st.query_params.get("code", ""))
    p = store.participant(code) if code else None
    if p is None:
        welcome(survey, store)
        return
    st.session_state.code = code
    st.query_params["code"] = code  # a refresh or a reopened link resumes without typing the code
    answered = store.answered(code)
    if p.before_at is None:
        st.info(f"Your participant code is **{code}**. Note it down: with it you can continue later, on any device.")
        questionnaire(store, code, "before", BEFORE)
    elif len(answered) < len(p.pair_order):
        pair_page(cfg, survey, store, code, p.pair_order, p.sides, answered)
    elif p.after_at is None:
        questionnaire(store, code, "after", AFTER)
    else:
        st.header("Thank you!")
        st.success(f"All {len(p.pair_order)} answers are saved. You can close this page.")
    st.caption(f"Your participant code: **{code}** (to continue later, on any device)")


# ----------------------------------------------------------------------------------------------
# Study team page


def results_page(cfg: AppConfig, survey: Survey, store: SurveyStore) -> None:
    """Scores, statistics, breakdowns, plots and exports, behind the admin password."""
    st.title("Survey results")
    try:
        expected = admin_password(cfg.admin_password_file)
    except (FileNotFoundError, ValueError) as e:
        st.error(str(e))
        return
    if expected is None:
        st.error(f"No admin password is configured: set ${PASSWORD_ENV}, or ${PASSWORD_FILE_ENV} or "
                 "--admin_password_file to a file holding it.")
        return
    if not st.session_state.get("admin"):
        with st.form("login"):
            given = st.text_input("Admin password", type="password", key="admin-password")
            ok = st.form_submit_button("Log in", key="login-submit", type="primary")
        if ok:
            # Checked and logged in one database transaction, so the lockout holds across sessions.
            outcome, left = store.admin_login(lambda: check_password(given, expected))
            if outcome == "ok":
                st.session_state.admin = True
                st.rerun()
            log.warning("admin login %s (lock left %.0f s)", outcome, left.total_seconds())
            time.sleep(1.0)  # slows guessing
            if outcome == "locked" or left.total_seconds() > 0:
                st.error(f"Too many failed logins: the login is locked for {_minutes(left)}. Failed attempts are logged.")
            else:
                st.error("Wrong password.")
        return

    unfinished = st.toggle("Include participants who have not finished", key="unfinished")
    res = survey_results(survey.root, include_unfinished=unfinished)
    c = st.columns(4)
    c[0].metric("Started", res["n_started"])
    c[1].metric("Finished", res["n_finished"])
    if res["scores"] is None:
        st.info("No answers to analyse yet.")
        return
    c[2].metric("Mean / median score", f"{res['scores']['mean']:.1f} / {res['scores']['median']:.1f}")
    pooled = res["pooled"]
    c[3].metric("Pooled accuracy", f"{pooled['accuracy']:.1%}",
                help=f"95% Wilson {pooled['ci_low']:.1%}–{pooled['ci_high']:.1%}; exact binomial p = {pooled['p_value']:.3g}")
    st.subheader("Per participant (exact binomial test against 50%, Wilson 95% interval)")
    st.dataframe(res["participants"], hide_index=True)
    for name, fig in figures(res).items():
        st.pyplot(fig, clear_figure=True)
        st.caption(name)
    tabs = st.tabs(["By group", "Per pair", "Before / after", "Strategies"])
    for group, rows in res["breakdowns"].items():
        tabs[0].markdown(f"**{group}**")
        tabs[0].dataframe(rows, hide_index=True)
    tabs[1].dataframe(res["pairs"], hide_index=True)
    tabs[2].json({"before": res["before"], "after": res["after"]})
    for s in res["strategies"]:
        # Plain text: participant text rendered as Markdown could plant images, links or scripts.
        tabs[3].text(f"{s['participant']}: {s['text']}")
    st.subheader("Export")
    st.download_button("survey_results.json", json.dumps(res, indent=2, default=str), "survey_results.json")
    for name, text in store.csv_exports().items():  # formula-like cells neutralised for spreadsheets
        st.download_button(f"{name}.csv", text, f"{name}.csv", key=f"csv-{name}")
    if st.button("Log out", key="logout"):
        st.session_state.admin = False
        st.rerun()


def _minutes(left) -> str:
    m = max(1, round(left.total_seconds() / 60))
    return f"{m} minute{'s' if m != 1 else ''}"


def main() -> None:
    """Read the config, open the survey, route to the participant or results page."""
    st.set_page_config(page_title="Echo survey", layout="wide")
    st.set_option("client.showErrorDetails", "none")  # a last line of defence: never a traceback
    st.markdown(CSS, unsafe_allow_html=True)
    if st.session_state.get("failed"):
        unavailable(st.session_state.pop("failed"))
        return
    try:
        cfg = _config()
        survey, store = _open(cfg.survey)
    except Exception:  # a bad --survey, a missing image, a corrupt responses.sqlite, ...
        unavailable(_log_failure("opening the survey"))
        return
    try:
        if st.query_params.get("view") == "results":
            results_page(cfg, survey, store)
        else:
            participant(cfg, survey, store)
    except Exception:  # a missing pair image, a database failing mid-survey, ...
        unavailable(_log_failure("rendering a page"))


main()
