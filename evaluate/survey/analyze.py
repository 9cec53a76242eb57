"""Analyse a survey's responses for the study report: survey_results.json, PNG plots, CSV export.

    python evaluate/survey/analyze.py --survey surveys/2024-pilot --out reports/survey
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from echosynth.evaluate.survey.design import load_survey
from echosynth.evaluate.survey.results import save_figures, survey_results
from echosynth.evaluate.survey.store import SurveyStore
from echosynth.gen.core.config import ConfigError, field, parse_config
from echosynth.gen.core.io import warn_if_tracked, write_json
from echosynth.gen.core.script import run_script, user_errors


@dataclass
class AnalyzeConfig:
    """Options of `evaluate/survey/analyze.py`."""

    survey: str = field("", help="survey directory (built by build.py, answered through app.py)")
    out: str = field("", help="output directory for survey_results.json, the PNGs and the CSVs")
    include_unfinished: bool = field(False, help="also count participants who did not finish")
    csv: bool = field(True, help="also export the raw tables (participants/questions/answers.csv)")

    def validate(self) -> None:
        """Required paths are given."""
        for key in ("survey", "out"):
            if not getattr(self, key):
                raise ConfigError(f"--{key} is required")


@user_errors("", ValueError)  # SurveyError is one
def main(argv: list[str] | None = None) -> int:
    """Parse the config, compute the results, write JSON, plots and CSVs."""
    cfg = parse_config(AnalyzeConfig, argv, description=__doc__)
    out = Path(cfg.out)
    res = survey_results(cfg.survey, include_unfinished=cfg.include_unfinished)
    survey = load_survey(cfg.survey)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.csv:
        warn_if_tracked(out, "survey analysis; its CSVs hold participant codes", "analyze.py")
    res["plots"] = save_figures(res, out)
    if cfg.csv:
        res["csv"] = sorted(p.name for p in SurveyStore(survey.db_path, survey.survey_id).export_csv(out).values())
    write_json(out / "survey_results.json", res)
    s = res["scores"]
    summary = (f"mean {s['mean']:.1f}, median {s['median']:.1f} of {res['survey']['n_pairs']}; pooled accuracy "
               f"{res['pooled']['accuracy']:.3f} (p = {res['pooled']['p_value']:.3g})") if s else "no answers yet"
    print(f"{res['n_included']} participant(s) included ({res['n_started']} started, {res['n_finished']} finished): {summary}")
    print(f"wrote {out / 'survey_results.json'} and {len(res['plots'])} plot(s)")
    return 0


if __name__ == "__main__":
    run_script(main)
