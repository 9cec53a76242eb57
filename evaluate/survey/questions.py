"""The questionnaire before and after the pairs (thesis Appendix A.3), shared by app and analysis."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Question:
    """One questionnaire item: `kind` is choice (ordered options), number or text."""

    key: str
    label: str
    kind: str
    options: tuple[str, ...] = ()
    required: bool = True


EXPERIENCE = ("None", "A little", "Some", "Considerable", "Extensive")

BEFORE = (
    Question("occupation", "Current occupation", "choice",
             ("Medical student", "Resident / in specialist training", "Specialist", "General practitioner",
              "Sonographer / nurse", "Researcher", "Retired", "Other")),
    Question("specialty", "Medical specialty", "choice",
             ("Cardiology", "Anesthesiology", "Radiology", "Emergency medicine", "Internal medicine",
              "Primary care", "Infectious diseases", "Surgery", "Ear, nose and throat", "Other", "None yet")),
    Question("years_experience", "How many years of experience do you have from working in the medical "
             "field after medical school?", "number"),
    Question("ultrasound_experience", "What is your level of experience with ultrasound images in general?",
             "choice", EXPERIENCE),
    Question("echo_experience", "What is your level of experience with echocardiograms specifically?",
             "choice", EXPERIENCE),
    Question("expected_difficulty", "Generally, how challenging do you think it will be to spot the real "
             "echocardiograms?", "choice", ("Very easy", "Easy", "Moderate", "Difficult", "Very difficult")),
)

AFTER = (
    Question("confidence_overall", "Generally, how confident were you with your answers about which images "
             "were the real ones?", "choice",
             ("Not at all confident", "Not so confident", "Somewhat confident", "Confident", "Very confident")),
    Question("strategy", "Generally, how did you distinguish real echocardiograms from fake ones?", "text",
             required=False),
)

# Optional confidence for each pair, stored as 1..3.
PAIR_CONFIDENCE = ("Guess", "Somewhat sure", "Sure")

YEARS_BINS = ((0, 4, "0–4"), (5, 9, "5–9"), (10, 19, "10–19"), (20, 200, "20+"))


def years_bin(value) -> str:
    """The experience band of a years-after-medical-school answer ('' if not a number)."""
    try:
        y = float(value)
    except (TypeError, ValueError):
        return ""
    for lo, hi, name in YEARS_BINS:
        if lo <= y <= hi or (lo <= y < hi + 1):
            return name
    return ""
