"""Build a study's single self-contained HTML report (images embedded), its CSV tables and a Markdown summary.

  python reports/build.py STUDY_DIR            # -> STUDY_DIR/report.html, tables/*.csv, summary.md

Reads run-directory files only (study.json, summary.json, metrics.json, fidelity.json, …); a
section whose experiment did not run says so instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from echosynth.gen.core.config import ConfigError, field, parse_config
from echosynth.gen.core.io import write_text
from echosynth.gen.core.script import run_script, user_errors
from echosynth.reports.collect import load_study
from echosynth.reports.render import esc, page, section


@dataclass
class ReportConfig:
    study: str = field("", help="study directory (holds study.json)")
    out: str = field("", help="report file (default STUDY/report.html)")


SECTIONS = (  # anchor, title, builder name in echosynth.reports.sections
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
    # here: --help answers without matplotlib
    from echosynth.reports import sections
    from echosynth.reports.findings import (
        classifier_gates,
        findings,
        not_evidence,
        set_gates,
        thesis_directions,
    )

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
    gates, clf_gates = set_gates(study), classifier_gates(study)
    found = [(f, not_evidence(f, gates, clf_gates)) for f in findings(study)]
    directions = thesis_directions(study, gates, clf_gates)
    found_html = gate_box(gates) + classifier_gate_box(clf_gates) + ("<ul class=findings>" + "".join(
        f"<li class=unusable><b>{esc(why[0])}</b> ({esc(why[1])}); not evidence: {esc(f.text)}</li>"
        if why[1] else f"<li>{esc(f.text)}</li>" for f, why in found) + "</ul>" if found else
        "<p class=absent>No findings yet: no pair of finished experiments to compare.</p>") + directions_html(directions)
    n_done = sum(s.done for s in study.stages)
    state = (f"all {n_done} stages finished" if n_done == len(study.stages) else
             f"{n_done} of {len(study.stages)} stages finished")
    subtitle = f"{study.dir.resolve()} · {state} · updated {study.header.get('updated', '?')}"
    nav = [("findings", "Findings")] + [(a, t) for a, t, _ in SECTIONS]
    title = f"echosynth study: {study.header.get('name', study.dir.name)}"
    write_text(out, page(title, subtitle, nav, section("findings", "Findings", found_html) + "".join(bodies)))
    table_dir = study.dir / "tables"
    for t in tables:
        t.write_csv(table_dir / f"{t.name}.csv")
    md = [f"# {title}", "", f"{subtitle}", "", "## Findings", ""]
    md += [f"- **{g['set']} {g['status'].upper()}** the quality gate: {g['summary']}" for g in gates.values()]
    md += [f"- classifier **{g['stage']}**: **{g['status']}** ({g['summary']})" for g in clf_gates.values()]
    md += [f"- {'**' + why[0] + '** (' + why[1] + '); not evidence: ' if why[1] else ''}{f.text}"
           for f, why in found] + ["", "## Thesis directions at the smallest real subset", ""]
    md += [f"- {d}: **{status}** ({why})" for d, status, why in directions] + [""]
    md += [t.to_markdown() for t in tables if t.rows]
    write_text(study.dir / "summary.md", "\n".join(md))
    return out


def gate_box(gates: dict[int, dict]) -> str:
    """The quality-gate box at the top of Findings: which synthetic sets fail, and why."""
    if not gates:
        return ""
    bad = [g for g in gates.values() if g["status"] != "pass"]
    th = next((g["thresholds"] for g in gates.values() if g.get("thresholds")), {})  # as the fidelity runs applied them
    rule = (f"above-chance class ratio ≥ {th.get('min_class_ratio')}, FID ≤ {th.get('max_fid_over_floor')} × the "
            f"real-vs-real floor, outside-sector mean ≤ {th.get('outside_factor')} × real + "
            f"{th.get('outside_margin')}/255") if th else "the study's gate thresholds"
    items = "".join(f"<li><b>{esc(g['set'])}</b> (DDPM on {esc(g['subset'])} real): <b>{esc(g['status'].upper())}</b>"
                    f" — {esc('; '.join([g['summary']] + [c['text'] for c in g['checks'] if c['ok'] is None]))}</li>"
                    for g in gates.values())
    if bad:
        head = (f"<b>Quality gate: {len(bad)} of {len(gates)} synthetic sets are unusable.</b> Every finding below "
                "that uses one of them is marked as resting on an unusable generator and is not evidence.")
        return f"<div class=gate-fail role=alert>{head}<ul>{items}</ul><p class=caption>Gate: {esc(rule)}.</p></div>"
    return (f"<div class=gate-pass><b>Quality gate: all {len(gates)} synthetic sets pass</b> ({esc(rule)}).<ul>"
            f"{items}</ul></div>")


def classifier_gate_box(clf_gates: dict[str, dict]) -> str:
    """The classifier gate's box: which classifier arms did not learn (their findings are not evidence)."""
    if not clf_gates:
        return ""
    bad = [g for g in clf_gates.values() if g["status"] != "learned"]
    split = next((g["eval_set"] for g in clf_gates.values() if g.get("eval_set")), "test")
    items = "".join(f"<li><b>{esc(g['stage'])}</b>: <b>{esc(g['status'])}</b> — {esc(g['summary'])}</li>"
                    for g in clf_gates.values())
    rule = (f"an arm did not learn when the 95% interval of its {split} balanced accuracy (bootstrap over images nested "
            "in seeds) includes chance 1/K, or a seed gives one class to more than 90% of the images")
    if bad:
        head = (f"<b>Classifier gate: {len(bad)} of {len(clf_gates)} classifier runs did not learn or were not "
                "verified.</b> Every finding below that compares one of them is marked and is not evidence.")
        return f"<div class=gate-fail role=alert>{head}<ul>{items}</ul><p class=caption>Gate: {esc(rule)}.</p></div>"
    return (f"<div class=gate-pass><b>Classifier gate: all {len(clf_gates)} classifier runs learned</b> ({esc(rule)})."
            f"<details><summary>per run</summary><ul>{items}</ul></details></div>")


def directions_html(directions: list[tuple[str, str, str]]) -> str:
    """The thesis directions at the smallest real subset: reproduced, not reproduced, not testable."""
    if not directions:
        return ""
    rows = "".join(f"<li><b>{esc(d)}</b>: <span class=dir-{esc(status.replace(' ', '-'))}>{esc(status)}</span>"
                   f" — {esc(why)}</li>" for d, status, why in directions)
    return f"<h3>Thesis directions at the smallest real subset</h3><ul class=findings>{rows}</ul>"


@user_errors("build.py", FileNotFoundError)
def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ReportConfig, argv, description=__doc__, positional=("study",))
    if not cfg.study:
        raise ConfigError("give the study directory: python reports/build.py STUDY_DIR")
    out = build_report(cfg.study, cfg.out or None)
    print(f"report: {out.resolve()}")
    return 0


if __name__ == "__main__":
    run_script(main)
