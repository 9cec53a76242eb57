"""Build a spot-the-fake survey: same-view real/synthetic pairs under neutral names + answer key.

    python evaluate/survey/build.py --real data/split/train.csv --fake runs/00007-sample/manifest.csv \
        --out surveys/2024-pilot [--pairs 50] [--views A4C,PLAX] [--seed 0]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from echosynth.evaluate.survey.design import KEY_FILE, SurveyError, build_survey
from echosynth.gen.core.config import ConfigError, field, parse_config, to_dict
from echosynth.gen.core.io import check_writable_output, read_json, warn_if_tracked
from echosynth.gen.core.script import run_script, user_errors
from echosynth.gen.data.manifest import KNOWN_VIEWS


@dataclass
class BuildConfig:
    """Options of `evaluate/survey/build.py`."""

    real: str = field("", help="manifest of real images (rows with source 'synthetic' are ignored)")
    fake: str = field("", help="manifest of synthetic images (rows with source 'synthetic' are used)")
    out: str = field("", help="survey directory to create")
    pairs: int = field(50, min=1, max=1000, help="number of real/synthetic pairs (thesis: 50)")
    views: list[str] = field(default_factory=lambda: ["A4C", "PLAX"], choices=KNOWN_VIEWS,
                             help="views to draw pairs from, split evenly (thesis: A4C,PLAX)")
    real_split: str = field("train", choices=("train", "val", "test", "shift", ""),
                            help="split the real images come from ('' = all rows)")
    seed: int = field(0, min=0, help="seed of the pair selection and of the pairs' stored order")
    image_size: int = field(0, min=0, max=4096, help="common stored size in px (0 = largest input size)")
    title: str = field("", help="heading shown to participants")
    overwrite: bool = field(False, help="replace an existing, non-empty --out directory")
    allow_outside_paths: bool = field(False, help="accept manifest rows pointing outside their manifest's folder "
                                                  "(absolute or ../ paths), for data that really lives elsewhere")

    def validate(self) -> None:
        """Required paths are given."""
        for key in ("real", "fake", "out"):
            if not getattr(self, key):
                raise ConfigError(f"--{key} is required")


@user_errors("", SurveyError, FileExistsError)
def main(argv: list[str] | None = None) -> int:
    """Parse the config, build the survey, print where everything went."""
    cfg = parse_config(BuildConfig, argv, description=__doc__)
    out = check_writable_output(cfg.out, cfg.overwrite)
    if cfg.overwrite and out.exists():
        import shutil

        shutil.rmtree(out)
    survey = build_survey(cfg.real, cfg.fake, out, n_pairs=cfg.pairs, views=list(cfg.views), seed=cfg.seed,
                          real_split=cfg.real_split, image_size=cfg.image_size, title=cfg.title,
                          config=to_dict(cfg), allow_outside=cfg.allow_outside_paths)
    views = {}
    for p in survey.pairs:
        views[p.view] = views.get(p.view, 0) + 1
    print(f"survey {survey.survey_id}: {len(survey.pairs)} pairs ({', '.join(f'{v} {n}' for v, n in views.items())}) in {out}")
    print(f"answer key: {out / KEY_FILE} (private: keep it out of anything you share with participants)")
    check = read_json(out / "build.json")["size_check"]
    print(f"file-size check: AUC {check['auc_served']:.2f} as served ({check['served_px']} px), "
          f"{check['auc_stored']:.2f} as stored, over {check['n_pairs']} pairs (0.5 = size tells nothing)")
    if check["warning"]:
        print(f"warning: {check['warning']}", file=sys.stderr)
    warn_if_tracked(out, "survey with the private answer key; responses.sqlite will be written here", "build.py")
    print(f"run it:     streamlit run evaluate/survey/app.py -- --survey {out}")
    return 0


if __name__ == "__main__":
    run_script(main)
