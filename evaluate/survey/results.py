"""Survey results: scores against the answer key, statistics, breakdowns and plots.

Shared by the admin results page (`app.py`) and `analyze.py`, so both show the same numbers.
Participants are reported by their order of arrival (P01, P02, …), never by their resume code.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from echosynth.evaluate.survey.design import Survey, load_key, load_survey
from echosynth.evaluate.survey.questions import (
    AFTER,
    BEFORE,
    PAIR_CONFIDENCE,
    YEARS_BINS,
    years_bin,
)
from echosynth.evaluate.survey.stats import proportion_summary
from echosynth.evaluate.survey.store import SurveyStore
from echosynth.gen.core.io import atomic_path

GROUPS = ("occupation", "specialty", "years_band", "ultrasound_experience", "echo_experience",
          "expected_difficulty", "confidence_overall")


def load_tables(survey: Survey) -> dict[str, pd.DataFrame]:
    """The store's tables (empty ones if nobody has taken the survey yet)."""
    return SurveyStore(survey.db_path, survey.survey_id).frames()


def scored_answers(answers: pd.DataFrame, key: dict[str, dict]) -> pd.DataFrame:
    """Answers with `view`, `real_side` and `correct` (chosen image is the real one) added."""
    df = answers.copy()
    missing = sorted(set(df["pair_id"]) - set(key))
    if missing:
        raise ValueError(f"answers mention pair(s) {missing[:5]} that the answer key does not hold; "
                         "was the survey rebuilt after people answered it?")
    real = df["pair_id"].map(lambda p: key[p]["real"])
    df["view"] = df["pair_id"].map(lambda p: key[p]["view"])
    df["real_side"] = np.where(df["left_image"] == real, "left", "right")
    df["correct"] = (df["chosen_image"] == real).astype(int)
    return df


def participant_table(tables: dict[str, pd.DataFrame], answers: pd.DataFrame) -> pd.DataFrame:
    """One row per participant: label, progress, questionnaire answers, score and statistics."""
    parts = tables["participants"].reset_index(drop=True)
    wide = tables["questions"].pivot_table(index="code", columns="question", values="answer", aggfunc="first")
    rows = []
    for i, p in parts.iterrows():
        a = answers[answers["code"] == p["code"]]
        k, n = int(a["correct"].sum()), len(a)
        q = wide.loc[p["code"]].to_dict() if p["code"] in wide.index else {}
        row = {"participant": f"P{i + 1:02d}", "code": p["code"], "finished": p["after_at"] is not None
               and not (isinstance(p["after_at"], float) and math.isnan(p["after_at"])),
               "started_at": p["created_at"], "n_answered": n}
        row.update(proportion_summary(k, n))
        row["median_response_s"] = float(a["response_ms"].median() / 1000) if n and a["response_ms"].notna().any() else math.nan
        for question in BEFORE + AFTER:
            row[question.key] = q.get(question.key)
        row["years_band"] = years_bin(row.get("years_experience"))
        rows.append(row)
    return pd.DataFrame(rows)


def _order(values, group: str) -> list:
    options = {q.key: q.options for q in BEFORE + AFTER}
    options["years_band"] = tuple(b[2] for b in YEARS_BINS)
    known = list(options.get(group, ()))
    values = [v for v in values if v is not None and v == v and v != ""]
    return [v for v in known if v in values] + sorted(set(values) - set(known), key=str)


def breakdown(people: pd.DataFrame, answers: pd.DataFrame, group: str) -> list[dict]:
    """Accuracy (pooled answers, Wilson CI) and mean score per value of a participant attribute."""
    out = []
    for value in _order(people[group].unique(), group):
        codes = people.loc[people[group] == value, "code"]
        a = answers[answers["code"].isin(codes)]
        entry = {"group": value, "n_participants": int(len(codes)),
                 "mean_correct": float(people.loc[people[group] == value, "correct"].mean())}
        entry.update(proportion_summary(int(a["correct"].sum()), len(a)))
        out.append(entry)
    return out


def _records(df: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in df.to_dict("records")]


def survey_results(survey_dir: str | Path, include_unfinished: bool = False) -> dict:
    """Everything the study report and the admin page show, as one JSON-friendly dict."""
    survey = load_survey(survey_dir)
    key = load_key(survey_dir)
    tables = load_tables(survey)
    answers = scored_answers(tables["answers"], key)
    people_all = participant_table(tables, answers)
    people = people_all if include_unfinished or people_all.empty else people_all[people_all["finished"]]
    people = people[people["n_answered"] > 0] if not people.empty else people
    codes = set(people["code"]) if not people.empty else set()
    used = answers[answers["code"].isin(codes)]

    res: dict = {
        "survey": {"survey_id": survey.survey_id, "n_pairs": len(survey.pairs),
                   "views": sorted({p.view for p in survey.pairs})},
        "include_unfinished": include_unfinished,
        "n_started": int(len(people_all)),
        "n_finished": int(people_all["finished"].sum()) if not people_all.empty else 0,
        "n_included": int(len(people)),
        "n_answers": int(len(used)),
    }
    if people.empty:
        res.update(participants=[], scores=None, pooled=proportion_summary(0, 0), breakdowns={}, by_view=[],
                   by_pair_confidence=[], pairs=[], before={}, after={}, strategies=[])
        return res

    scores = people["correct"].to_numpy(dtype=float)
    res["participants"] = _records(people.drop(columns=["code"]))
    res["scores"] = {"mean": float(scores.mean()), "median": float(np.median(scores)),
                     "sd": float(scores.std(ddof=1)) if len(scores) > 1 else None,
                     "min": int(scores.min()), "max": int(scores.max()),
                     "mean_accuracy": float(people["accuracy"].mean()),
                     "n_above_chance": int(((people["p_value"] < 0.05) & (people["accuracy"] > 0.5)).sum()),
                     "n_below_chance": int(((people["p_value"] < 0.05) & (people["accuracy"] < 0.5)).sum())}
    res["pooled"] = proportion_summary(int(used["correct"].sum()), len(used))
    res["pooled"]["note"] = "pools all answers as independent trials; ignores clustering by participant"
    res["breakdowns"] = {g: breakdown(people, used, g) for g in GROUPS}
    res["by_view"] = [{"view": v} | proportion_summary(int(a["correct"].sum()), len(a))
                      for v, a in used.groupby("view")]
    res["by_pair_confidence"] = [
        {"confidence": PAIR_CONFIDENCE[int(c) - 1] if 1 <= int(c) <= len(PAIR_CONFIDENCE) else str(c)}
        | proportion_summary(int(a["correct"].sum()), len(a)) for c, a in used.dropna(subset=["confidence"]).groupby("confidence")]
    pairs = []
    for p in survey.pairs:
        a = used[used["pair_id"] == p.pair_id]
        s = proportion_summary(int(a["correct"].sum()), len(a))
        pairs.append({"pair_id": p.pair_id, "view": p.view, **s,
                      "difficulty": (1 - s["accuracy"]) if len(a) else None,
                      "median_response_s": float(a["response_ms"].median() / 1000) if len(a) else None})
    res["pairs"] = _records(pd.DataFrame(pairs))
    res["before"] = {q.key: _counts(people[q.key], q) for q in BEFORE}
    res["after"] = {q.key: _counts(people[q.key], q) for q in AFTER if q.kind != "text"}
    res["strategies"] = [{"participant": r["participant"], "text": r["strategy"]}
                         for _, r in people.iterrows() if r["strategy"]]
    return res


def _counts(values: pd.Series, q) -> dict:
    if q.kind == "number":
        nums = pd.to_numeric(values, errors="coerce").dropna()
        return {"values": [float(v) for v in nums], "median": float(nums.median()) if len(nums) else None,
                "min": float(nums.min()) if len(nums) else None, "max": float(nums.max()) if len(nums) else None}
    counts = values.value_counts()
    return {o: int(counts.get(o, 0)) for o in _order(list(q.options) + list(counts.index), q.key)}


# ----------------------------------------------------------------------------------------------
# Plots


def figures(res: dict) -> dict:
    """Matplotlib figures by file name (empty if nobody is included yet)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not res.get("participants"):
        return {}
    figs = {}
    people = pd.DataFrame(res["participants"])
    n_pairs = res["survey"]["n_pairs"]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.hist(people["correct"], bins=np.arange(-0.5, n_pairs + 1.5, 1), color="#4c72b0")
    ax1.axvline(n_pairs / 2, color="k", ls="--", label="chance")
    ax1.axvline(res["scores"]["mean"], color="#dd8452", label=f"mean {res['scores']['mean']:.1f}")
    ax1.set(xlabel=f"correct answers (of {n_pairs})", ylabel="participants", title="Scores")
    ax1.legend()
    y = np.arange(len(people))
    acc = people["accuracy"].to_numpy(dtype=float)
    err = np.vstack([acc - people["ci_low"].to_numpy(dtype=float), people["ci_high"].to_numpy(dtype=float) - acc])
    ax2.errorbar(acc, y, xerr=err, fmt="o", color="#4c72b0", capsize=3)
    ax2.axvline(0.5, color="k", ls="--")
    ax2.set(yticks=y, yticklabels=people["participant"], xlim=(0, 1), xlabel="accuracy (Wilson 95% CI)",
            title="Per participant")
    ax2.invert_yaxis()
    fig.tight_layout()
    figs["survey_scores.png"] = fig

    pairs = pd.DataFrame(res["pairs"]).dropna(subset=["accuracy"]).sort_values("accuracy")
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(pairs) + 2), 4))
    views = sorted(pairs["view"].unique())
    colours = dict(zip(views, ["#4c72b0", "#dd8452", "#55a868", "#c44e52"] * 4))
    ax.bar(range(len(pairs)), pairs["accuracy"], color=[colours[v] for v in pairs["view"]])
    ax.axhline(0.5, color="k", ls="--")
    ax.set(xticks=range(len(pairs)), ylim=(0, 1), ylabel="share who picked the real image",
           title="Per-pair accuracy (low = the synthetic image fooled most)")
    ax.set_xticklabels(pairs["pair_id"], rotation=90, fontsize=7)
    for v in views:
        ax.bar([], [], color=colours[v], label=v)
    ax.legend()
    fig.tight_layout()
    figs["survey_pairs.png"] = fig

    groups = [("echo_experience", "Echo experience"), ("ultrasound_experience", "Ultrasound experience"),
              ("specialty", "Specialty"), ("years_band", "Years after medical school")]
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 4), sharey=True)
    for ax, (g, title) in zip(axes, groups):
        rows = res["breakdowns"].get(g, [])
        acc = np.array([r["accuracy"] for r in rows], dtype=float)
        lo = np.array([r["ci_low"] for r in rows], dtype=float)
        hi = np.array([r["ci_high"] for r in rows], dtype=float)
        ax.bar(range(len(rows)), acc, yerr=np.vstack([acc - lo, hi - acc]) if rows else None, color="#4c72b0", capsize=3)
        ax.axhline(0.5, color="k", ls="--")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([f"{r['group']}\n(n={r['n_participants']})" for r in rows], rotation=45, ha="right", fontsize=8)
        ax.set(title=title, ylim=(0, 1))
    axes[0].set_ylabel("accuracy (Wilson 95% CI)")
    fig.tight_layout()
    figs["survey_experience.png"] = fig

    likert = [("before", "ultrasound_experience", "Ultrasound experience (before)"),
              ("before", "echo_experience", "Echo experience (before)"),
              ("before", "expected_difficulty", "Expected difficulty (before)"),
              ("after", "confidence_overall", "Confidence in answers (after)")]
    fig, axes = plt.subplots(1, len(likert), figsize=(4.2 * len(likert), 3.6))
    for ax, (phase, k, title) in zip(axes, likert):
        counts = res[phase].get(k, {})
        ax.barh(list(counts), list(counts.values()), color="#55a868" if phase == "after" else "#4c72b0")
        ax.set(title=title, xlabel="participants")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.invert_yaxis()
    fig.tight_layout()
    figs["survey_questions.png"] = fig
    return figs


def save_figures(res: dict, out_dir: str | Path) -> list[str]:
    """Write the figures as PNGs (atomically) and close them; return their file names."""
    import matplotlib.pyplot as plt

    names = []
    for name, fig in figures(res).items():
        with atomic_path(Path(out_dir) / name) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
        plt.close(fig)
        names.append(name)
    return names

