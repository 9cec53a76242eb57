"""Build a study's single self-contained HTML report (images embedded), its CSV tables and a Markdown summary.

  python reports/build.py STUDY_DIR            # -> STUDY_DIR/report.html, tables/*.csv, summary.md

Reads run-directory files only (study.json, summary.json, metrics.json, fidelity.json, …); a
section whose experiment did not run says so instead of failing.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from gen.config import ConfigError, field, parse_config


@dataclass
class ReportConfig:
    study: str = field("", help="study directory (holds study.json)")
    out: str = field("", help="report file (default STUDY/report.html)")


SECTIONS = (  # anchor, title, builder name in reports.sections
    ("dataset", "Dataset", "dataset"),
    ("diffusion", "Diffusion model", "diffusion"),
    ("privacy", "Privacy", "privacy"),
    ("classification", "Classification", "classification"),
    ("features", "Feature maps", "features"),
    ("quality", "Quality grading", "quality"),
    ("provenance", "Provenance", "provenance"),
)


def build_report(study_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write report.html, tables/*.csv and summary.md for a study; return the report path."""
    from gen.io import write_text
    from reports import sections
    from reports.collect import load_study
    from reports.findings import findings
    from reports.render import esc, page, section

    study = load_study(Path(study_dir))
    out = Path(out) if out else study.dir / "report.html"
    bodies, tables = [], []
    for anchor, title, fn in SECTIONS:
        try:
            html, tabs = getattr(sections, fn)(study)
        except Exception as e:  # one broken input file must not cost the analyst the whole report
            html, tabs = f"<p class=absent><b>{esc(title)}</b> could not be built: {esc(type(e).__name__)}: {esc(e)}</p>", []
        bodies.append(section(anchor, title, html))
        tables += tabs
    found = findings(study)
    found_html = ("<ul class=findings>" + "".join(f"<li>{esc(f)}</li>" for f in found) + "</ul>") if found else \
        "<p class=absent>No findings yet: no pair of finished experiments to compare.</p>"
    n_done = sum(s.done for s in study.stages)
    subtitle = (f"{study.dir.resolve()} · {n_done} of {len(study.stages)} stages finished · "
                f"updated {study.header.get('updated', '?')}")
    nav = [("findings", "Findings")] + [(a, t) for a, t, _ in SECTIONS]
    title = f"echosynth study: {study.header.get('name', study.dir.name)}"
    write_text(out, page(title, subtitle, nav, section("findings", "Findings", found_html) + "".join(bodies)))
    table_dir = study.dir / "tables"
    for t in tables:
        t.write_csv(table_dir / f"{t.name}.csv")
    md = [f"# {title}", "", f"{subtitle}", "", "## Findings", ""] + [f"- {f}" for f in found] + [""]
    md += [t.to_markdown() for t in tables if t.rows]
    write_text(study.dir / "summary.md", "\n".join(md))
    return out


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ReportConfig, argv, description=__doc__, positional=("study",))
    if not cfg.study:
        print("build.py: error: give the study directory: python reports/build.py STUDY_DIR", file=sys.stderr)
        return 2
    try:
        out = build_report(cfg.study, cfg.out or None)
    except FileNotFoundError as e:
        print(f"build.py: error: {e}", file=sys.stderr)
        return 2
    print(f"report: {out.resolve()}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as e:
        print(f"build.py: error: {e}", file=sys.stderr)
        sys.exit(2)
