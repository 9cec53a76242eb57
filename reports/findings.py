"""Findings in words, computed from the study's numbers (never hard-coded conclusions).

Every comparison carries its 95% interval (reports/compare.py: a bootstrap over test images nested in
training seeds) and is called a gain or a loss only when the interval excludes zero. Findings are
computed on a split that did not select the compared checkpoints (the test split when checkpoints were
kept best-on-validation), and say which. Every finding names what it rests on: `rests_on`, the subsets
whose DDPM made a synthetic set it uses, and `arms`, the classifier runs it compares. The report marks
those whose synthetic set failed (or was not verified by) the quality gate, and those resting on a
classifier that did not learn (reports/classifier_gate.py), as not evidence. The set verdict is the one
evaluate/fidelity.py wrote into the set's fidelity.json (reports/collect.py:gate_of).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from echosynth.reports.classifier_gate import classifier_gate
from echosynth.reports.collect import Study, gate_of, per_class_recall, read_json_or_none
from echosynth.reports.compare import Diff, compare_recall, compare_runs, findings_split
from echosynth.reports.sections import fid_curve, fid_metrics

SPLIT_WORDS = {"test": "test", "val": "validation"}


@dataclass
class Finding:
    """One sentence, the subsets whose synthetic sets it rests on, and the classifier runs it compares."""

    text: str
    rests_on: list[int] = field(default_factory=list)
    arms: list[Path] = field(default_factory=list)


def _runs(study: Study, experiment: str, **meta):
    return [s for s in study.by_experiment(experiment) if all(s.meta.get(k) == v for k, v in meta.items())]


def _run(study: Study, experiment: str, **meta):
    rs = _runs(study, experiment, **meta)
    return rs[0].run_dir if rs else None


def _minority(study: Study, n: int) -> list[str]:
    """The least frequent classes (below 15% of the subset) of real subset n, rarest first."""
    info = read_json_or_none(study.split_dir / "splits.json") or {}
    counts = info.get("subset_counts", {}).get(str(n)) or {}
    total = sum(counts.values())
    if not total:
        return []
    rare = sorted((c for c, k in counts.items() if k / total < 0.15), key=counts.get)
    return rare or [min(counts, key=counts.get)]


def set_gates(study: Study) -> dict[int, dict]:
    """Quality-gate verdict of each subset's synthetic set (from its fidelity.json), keyed by subset."""
    out = {}
    for s in study.by_experiment("synthetic", done=False):
        if not s.name.startswith("sample-"):
            continue
        n = s.meta.get("subset")
        fid = study.get(f"fidelity-n{n}")
        data = read_json_or_none(fid.run_dir / "fidelity.json") if fid is not None and fid.done else None
        out[n] = {"subset": n, "set": s.name, "fidelity": fid.name if fid else None, **gate_of(data)}
    return out


def classifier_gates(study: Study) -> dict[str, dict]:
    """Classifier-gate verdict of every finished classifier run (reports/classifier_gate.py), by stage name."""
    out = {}
    for s in study.stages:
        if s.done and s.meta.get("arch") and (s.run_dir / "summary.json").is_file() and s.meta.get("task") != "quality":
            out[s.name] = {"stage": s.name, "run_dir": str(s.run_dir), "experiment": s.experiment,
                           **classifier_gate(s.run_dir)}
    return out


def _what(d: Diff, metric: str = "macro AUPRC") -> str:
    return f"{SPLIT_WORDS.get(d.eval_set, d.eval_set)} {metric}"


def _compare(label_a: str, label_b: str, d: Diff | None, fmt: str = ".3f", metric: str = "macro AUPRC") -> str:
    if d is None:
        return ""
    return f"{_what(d, metric)} {label_a} {d.a:{fmt}} vs {label_b} {d.b:{fmt}}: difference {d.text(fmt)}"


def _archs(study: Study) -> list[str]:
    return list(dict.fromkeys(s.meta.get("arch") for s in study.stages
                              if s.meta.get("arch") and s.experiment not in ("judge", "quality")))


def findings(study: Study) -> list[Finding]:
    """Findings with their uncertainty, one per comparison, on a split that selected none of the checkpoints."""
    subsets = study.config.get("dataset", {}).get("subsets", [])
    archs = _archs(study)
    out: list[Finding] = []
    for finding in FINDINGS:
        out += finding(study, archs, subsets)
    return out


def _real_vs_synthetic(study: Study, archs: list[str], subsets: list[int]) -> list[Finding]:
    """Training only on the synthetic set vs only on the real subset, per size, then a tally over sizes."""
    out = []
    for a in archs:
        diffs = []
        for i, n in enumerate(subsets):
            real, syn = _run(study, "real", subset=n, arch=a), _run(study, "synthetic", subset=n, arch=a, filtered=False)
            d = compare_runs(real, syn) if real and syn else None
            if d is None:
                continue
            diffs.append((n, d))
            where = f"smallest real subset ({n:,} images)" if i == 0 else f"{n:,} real images"
            out.append(Finding(f"{a}, {where}: training only on the balanced synthetic set vs only on the real "
                               f"subset: {_compare('real', 'synthetic', d)}.", [n], [real, syn]))
        if len(diffs) > 1:
            wins = [n for n, d in diffs if d.verdict == "gain"]
            losses = [n for n, d in diffs if d.verdict == "loss"]
            out.append(Finding(f"{a}: synthetic-only clearly beat real-only at {len(wins)} of {len(diffs)} subset sizes"
                               + (f" ({', '.join(f'{w:,}' for w in wins)})" if wins else "")
                               + f", clearly lost at {len(losses)}, no clear difference at the rest.",
                               [n for n, _ in diffs],
                               [r for n, _ in diffs for r in (_run(study, "real", subset=n, arch=a),
                                                              _run(study, "synthetic", subset=n, arch=a, filtered=False))]))
    return out


def _scratch_vs_frozen(study: Study, archs: list[str], subsets: list[int]) -> list[Finding]:
    """Thesis Table 5.3: from scratch vs a head on frozen ImageNet features, on the same real subset."""
    out = []
    frozen = [a for a in archs if a.startswith("fid_inception_frozen")]
    for f in frozen:
        for a in (a for a in archs if a not in frozen):
            for n in subsets:
                scratch, head = _run(study, "real", subset=n, arch=a), _run(study, "real", subset=n, arch=f)
                d = compare_runs(scratch, head) if scratch and head else None
                if d is None:
                    continue
                found = {"gain": "the frozen ImageNet features did better", "loss": "training from scratch did better"
                         }.get(d.verdict, "no clear difference")
                out.append(Finding(f"{n:,} real images, from scratch vs frozen ImageNet features (cf. thesis Table 5.3: "
                                   f"from scratch won, VGG16 0.988 vs 0.892 on 32k frames): "
                                   f"{_compare(a + ' from scratch', f, d)}; {found}.", [], [scratch, head]))
    return out


def _minority_recall(study: Study, archs: list[str], subsets: list[int]) -> list[Finding]:
    """Recall of the rarest classes at the smallest subset, real-only vs synthetic-only."""
    out = []
    counts = (read_json_or_none(study.split_dir / "splits.json") or {}).get("subset_counts", {})
    for a in archs:
        n = subsets[0] if subsets else None
        real, syn = _run(study, "real", subset=n, arch=a), _run(study, "synthetic", subset=n, arch=a, filtered=False)
        minority = _minority(study, n) if n is not None else []
        split = findings_split(real, syn) if real and syn else None
        if not (real and syn and minority and split):
            continue
        rr, sr = per_class_recall(real, split), per_class_recall(syn, split)
        parts = [f"{c} {rr[c]:.2f} → {sr[c]:.2f}" for c in minority if c in rr and c in sr]
        if not parts:
            continue
        share = counts.get(str(n), {})
        tot = sum(share.values()) or 1
        names = ", ".join(f"{c} ({share.get(c, 0) / tot:.0%} of the subset)" for c in minority)
        d = compare_recall(real, syn, minority)
        tail = f"mean recall difference {d.text('.2f')}" if d else "no saved predictions, so no interval: not called a gain or a loss"
        out.append(Finding(f"{a}, {n:,} real: minority-class recall on {SPLIT_WORDS.get(split, split)} (share of the "
                           f"class classified correctly, seed mean) real → synthetic: {'; '.join(parts)}. Minority "
                           f"classes: {names}. {tail}.", [n], [real, syn]))
    return out


def _privacy_filter(study: Study, archs: list[str], subsets: list[int]) -> list[Finding]:
    """The privacy-filtered vs the unfiltered synthetic set (first architecture, smallest subset)."""
    out = []
    for a in archs[:1]:
        for n in subsets[:1]:
            syn, filt = (_run(study, "synthetic", subset=n, arch=a, filtered=x) for x in (False, True))
            d = compare_runs(syn, filt) if syn and filt else None
            if d is None:
                continue
            priv = study.get(f"privacy-n{n}")
            dropped = (((read_json_or_none(priv.run_dir / "privacy.json") or {}).get("filtered") or {}) if priv else {}).get("dropped")
            note = (" The filter removed no image, so both sets are the same." if dropped == 0 else
                    f" The filter removed {dropped} images." if dropped else "")
            out.append(Finding(f"{a}, {n:,} real: privacy-filtered vs unfiltered synthetic set: "
                               f"{_compare('unfiltered', 'filtered', d)}.{note}", [n], [syn, filt]))
    return out


def _mixing(study: Study, archs: list[str], subsets: list[int]) -> list[Finding]:
    """Each fraction of synthetic images added to the real subset, against real only."""
    out = []
    for a in archs:
        for n in subsets:
            real = _run(study, "real", subset=n, arch=a)
            mixes = sorted(_runs(study, "mixing", subset=n, arch=a), key=lambda r: r.meta["fraction"])
            parts, base = [], None
            for r in mixes:
                d = compare_runs(real, r.run_dir) if real else None
                if d is not None:
                    parts.append(f"+{r.meta['fraction']:.0%} synthetic: {d.b:.3f}, {d.text()}")
                    base = base or d
            if parts:
                out.append(Finding(f"{a}, {n:,} real: adding synthetic images to the real subset ({_what(base)}, real "
                                   f"only {base.a:.3f}): " + "; ".join(parts) + ".", [n], [real, *(r.run_dir for r in mixes)]))
    return out


def _resampling_baselines(study: Study, archs: list[str], subsets: list[int]) -> list[Finding]:
    """Synthetic-only against upsampling and SMOTE at the smallest subset (first architecture)."""
    out = []
    for a in archs[:1]:
        n = subsets[0] if subsets else None
        syn = _run(study, "synthetic", subset=n, arch=a, filtered=False)
        parts, arms, first = [], [syn], None
        for label, run in _baselines(study, n, a):
            if label == "real only":  # said in the synthetic-only finding
                continue
            d = compare_runs(run, syn) if syn else None
            if d is not None:
                parts.append(f"vs {label} {d.a:.3f}: {d.text()}")
                arms.append(run)
                first = first or d
        if parts:
            out.append(Finding(f"{a}, {n:,} real: synthetic-only ({_what(first)} {first.b:.3f}) against the resampling "
                               "baselines (difference = synthetic − baseline): " + "; ".join(parts) + ".", [n], arms))
    return out


def _fidelity(study: Study, archs: list[str], subsets: list[int]) -> list[Finding]:
    """FID of each synthetic set against its real training subset, beside the real-vs-real floor."""
    fids = []
    for s in study.by_experiment("synthetic"):
        if s.name.startswith("fidelity-"):
            m = fid_metrics(read_json_or_none(s.run_dir / "fidelity.json"))
            name = "inception" if "inception" in m else next(iter(m), None)
            if name and m[name]["fid"] is not None:
                fids.append((s.meta.get("subset", 0), name, m[name]["fid"], m[name]["floor_fid"]))
    if not fids:
        return []
    return [Finding("FID of each synthetic set against its real training subset: "
                    + "; ".join(f"{v:.2f} with {name} features (DDPM on {n:,}"
                                + (f"; real-vs-real floor {fl:.2f})" if fl is not None else ")")
                                for n, name, v, fl in fids) + ".")]


def _ablation(study: Study, archs: list[str], subsets: list[int]) -> list[Finding]:
    """The DDPM variant with the lowest Inception FID at the largest ablation sample count."""
    sizes = study.config.get("experiments", {}).get("ablation_samples", [])
    abl = []
    for s in study.by_experiment("ablation"):
        if s.name.endswith("-fidelity") and sizes:
            curve = dict(fid_curve(read_json_or_none(s.run_dir / "fidelity.json"), "fid_vs_samples", "n").get("inception", []))
            if curve.get(float(max(sizes))) is not None:
                abl.append((s.meta.get("variant"), curve[float(max(sizes))]))
    if not abl:
        return []
    best = min(abl, key=lambda x: x[1])
    return [Finding(f"Ablation: at {max(sizes):,} samples the lowest Inception FID is {best[1]:.2f}, with {best[0]} "
                    "(one run per variant, so differences within the FID's sampling spread are not resolved; "
                    "the thesis found learned σ + linear best, 4.56 at 10k).")]


def _privacy_flags(study: Study, archs: list[str], subsets: list[int]) -> list[Finding]:
    """Share of each synthetic set flagged as too close to a training image, beside the rule's false-positive rate."""
    out = []
    for s in study.by_experiment("synthetic"):
        if not s.name.startswith("privacy-"):
            continue
        d = read_json_or_none(s.run_dir / "privacy.json") or {}
        frac, cal = (d.get("flagged") or {}).get("fraction"), (d.get("calibration") or {}).get("fraction")
        if frac is not None:
            out.append(Finding(f"Privacy, DDPM on {s.meta.get('subset', 0):,} real: {frac:.1%} of synthetic images were "
                               "flagged as too close to a training image" + (
                                   f" (vs {cal:.1%} of held-out real images, the rule's false-positive rate)."
                                   if cal is not None else ".")))
    return out


def _domain_shift(study: Study, archs: list[str], subsets: list[int]) -> list[Finding]:
    """The final model on the test set vs the domain-shift set (neither selected its checkpoint)."""
    out = []
    for s in study.by_experiment("final"):
        d = compare_runs(s.run_dir, s.run_dir, "test", eval_set_b="shift")
        if d is None:
            continue
        rec = per_class_recall(s.run_dir, "shift")
        worst = min(rec, key=rec.get) if rec else None
        what = f"{s.meta['subset']:,} real + {s.meta['fraction']:.0%} synthetic" if "fraction" in s.meta else s.name
        out.append(Finding(f"Final model ({s.meta.get('arch', '')}, {what}): "
                           f"macro AUPRC test {d.a:.3f} vs domain-shift {d.b:.3f}: difference {d.text()}"
                           + (f"; the class hurt most by the shift is {worst} (recall {rec[worst]:.2f})." if worst else "."),
                           [s.meta["subset"]] if "subset" in s.meta and "fraction" in s.meta else [], [s.run_dir]))
    return out


# The findings in report order, each a function of (study, classifier architectures, real subset sizes).
FINDINGS = (_real_vs_synthetic, _scratch_vs_frozen, _minority_recall, _privacy_filter, _mixing, _resampling_baselines,
            _fidelity, _ablation, _privacy_flags, _domain_shift)


def _baselines(study: Study, n, arch) -> list[tuple[str, object]]:
    out = []
    real = _run(study, "real", subset=n, arch=arch)
    if real:
        out.append(("real only", real))
    for s in _runs(study, "upsampling", subset=n, arch=arch):
        t, total = s.meta.get("target"), s.meta.get("target_total")
        label = ("SMOTE" if t == "smote" else "upsampled to the majority class" if t == "majority" else
                 f"upsampled to {t:,}/class ({total:,} images)" if isinstance(t, int) and isinstance(total, int) else
                 f"upsampled to {t:,}/class" if isinstance(t, int) else f"upsampled to {t}")
        out.append((label, s.run_dir))
    return out


def not_evidence(finding: Finding, gates: dict[int, dict], clf_gates: dict[str, dict]) -> tuple[str, str]:
    """(label, why) a finding is not evidence (('', '') if every synthetic set it uses passed the quality gate
    and every classifier it compares learned)."""
    bad = [gates[n] for n in finding.rests_on if n in gates and gates[n]["status"] != "pass"]
    bad += [{"set": f"the synthetic set of subset {n}", "status": "missing"} for n in finding.rests_on if n not in gates]
    why = [f"{g['set']} " + ("failed the quality gate" if g["status"] == "fail" else "was not verified by the quality gate")
           for g in bad]
    by_dir = {g["run_dir"]: g for g in clf_gates.values()}
    dead = []
    for arm in finding.arms:
        g = by_dir.get(str(arm))
        if g is not None and g["status"] != "learned":
            dead.append(f"classifier {g['stage']} " + ("did not learn" if g["status"] == "did not learn" else
                                                       "was not verified by the classifier gate") + f": {g['summary']}")
    label = ("Rests on an unusable generator" if why else "") + (" and " if why and dead else "") + (
        ("rests on a classifier that did not learn" if why else "Rests on a classifier that did not learn") if dead else "")
    return label, "; ".join(why + dead)


# ----------------------------------------------------------------------------------------------
# Thesis directions at the smallest subset


def thesis_directions(study: Study, gates: dict[int, dict] | None = None,
                      clf_gates: dict[str, dict] | None = None) -> list[tuple[str, str, str]]:
    """(direction, status, why) for the smallest real subset: status reproduced / not reproduced / not testable."""
    subsets = study.config.get("dataset", {}).get("subsets", [])
    archs = _archs(study)
    if not subsets or not archs:
        return []
    n, a = subsets[0], archs[0]
    gates = set_gates(study) if gates is None else gates
    clf_gates = classifier_gates(study) if clf_gates is None else clf_gates
    g = gates.get(n)
    unusable = None if g and g["status"] == "pass" else (
        f"not testable: the synthetic set of the {n:,}-image subset "
        + ("failed the quality gate" if g and g["status"] == "fail" else "was not verified by the quality gate"))
    real, syn = _run(study, "real", subset=n, arch=a), _run(study, "synthetic", subset=n, arch=a, filtered=False)
    out = []

    def row(direction: str, thesis: str, d: Diff | None, arms: list, want: str = "gain", extra: str = "",
            metric: str = "macro AUPRC") -> None:
        dead = not_evidence(Finding("", [], [r for r in arms if r]), {}, clf_gates)[1]
        if d is None:
            out.append((direction, "not run", f"thesis: {thesis}; the runs it needs are missing"))
        elif unusable or dead:
            out.append((direction, "not testable", f"thesis: {thesis}; here {d.text()} on {d.eval_set}; "
                                                    f"{'; '.join(x for x in (unusable, dead) if x)}"))
        else:
            ok = d.verdict == want
            out.append((direction, "reproduced" if ok else "not reproduced",
                        f"thesis: {thesis}; here {_what(d, metric)} {d.text()}{extra}"))

    row("synthetic-only vs real-only", "synthetic-only beat real-only at 1k real (VGG16 0.64 → 0.93)",
        compare_runs(real, syn) if real and syn else None, [real, syn])
    minority = _minority(study, n)
    row(f"minority-class recall ({', '.join(minority)})", "synthetic training raised A2C 0 → 0.83 and PSAX 0 → 0.77",
        compare_recall(real, syn, minority) if real and syn and minority else None, [real, syn],
        metric="mean recall of these classes")
    mix_runs = _runs(study, "mixing", subset=n, arch=a) if real else []
    mixes = [(r.meta["fraction"], compare_runs(real, r.run_dir), r.run_dir) for r in mix_runs]
    mixes = [(f, d, r) for f, d, r in mixes if d is not None]
    if mixes:
        f, d, r = max(mixes, key=lambda m: (m[1].verdict == "gain", m[1].delta))
        row("real + synthetic mixing", "adding synthetic images to a small real subset helps", d, [real, r],
            extra=f" (best of {len(mixes)} fractions: +{f:.0%})")
    else:
        row("real + synthetic mixing", "adding synthetic images to a small real subset helps", None, [])
    base = {label: run for label, run in _baselines(study, n, a)}
    up = base.get("upsampled to the majority class")
    d_up = compare_runs(up, syn) if up and syn else None
    sized = [(label, run) for label, run in base.items() if label.startswith("upsampled to ") and run is not up]
    smote = base.get("SMOTE")
    extra = []
    for label, run in sized + ([("SMOTE", smote)] if smote else []):
        dd = compare_runs(run, syn) if syn else None
        if dd is not None:
            extra.append(f"synthetic vs {label}: {dd.text()}")
    row("upsampling and SMOTE vs synthetic", "synthetic (0.93) beat upsampling to the majority class (0.86) and "
        "matched upsampling to the synthetic set's size (0.93); SMOTE is this study's extension",
        d_up, [up, syn], extra=("; " + "; ".join(extra)) if extra else "")
    return out
