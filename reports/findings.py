"""Findings in words, computed from the study's numbers (never hard-coded conclusions)."""

from __future__ import annotations

from reports.collect import Study, metric_summary, per_class_recall, read_json
from reports.sections import METRIC, fid_curve, fid_metrics


def _runs(study: Study, experiment: str, **meta):
    return [s for s in study.by_experiment(experiment) if all(s.meta.get(k) == v for k, v in meta.items())]


def _val(study: Study, experiment: str, eval_set: str = "val", **meta) -> float | None:
    rs = _runs(study, experiment, **meta)
    return metric_summary(rs[0].run_dir, eval_set, METRIC)[0] if rs else None


def _minority(study: Study, n: int) -> list[str]:
    """The least frequent classes (below 15% of the subset) of real subset n, rarest first."""
    info = read_json(study.split_dir / "splits.json") or {}
    counts = info.get("subset_counts", {}).get(str(n)) or {}
    total = sum(counts.values())
    if not total:
        return []
    rare = sorted((c for c, k in counts.items() if k / total < 0.15), key=counts.get)
    return rare or [min(counts, key=counts.get)]


def _verb(delta: float, eps: float = 0.005) -> str:
    return "raised" if delta > eps else "lowered" if delta < -eps else "left about unchanged"


def findings(study: Study) -> list[str]:
    """Sentences stating what the numbers show, one per finding."""
    out: list[str] = []
    subsets = study.config.get("dataset", {}).get("subsets", [])
    archs = list(dict.fromkeys(s.meta.get("arch") for s in study.stages if s.meta.get("arch")))
    info = read_json(study.split_dir / "splits.json") or {}
    counts = info.get("subset_counts", {})
    # 1. Real vs synthetic per size.
    for a in archs:
        pairs = [(n, _val(study, "real", subset=n, arch=a), _val(study, "synthetic", subset=n, arch=a, filtered=False))
                 for n in subsets]
        pairs = [p for p in pairs if p[1] is not None and p[2] is not None]
        if not pairs:
            continue
        n, r, s = pairs[0]
        out.append(f"{a}, smallest real subset ({n:,} images): training only on the balanced synthetic set "
                   f"{_verb(s - r)} validation macro AUPRC from {r:.3f} (real) to {s:.3f} ({s - r:+.3f}).")
        wins = [p[0] for p in pairs if p[2] > p[1]]
        if len(pairs) > 1:
            out.append(f"{a}: synthetic-only beat real-only at {len(wins)} of {len(pairs)} subset sizes"
                       + (f" ({', '.join(f'{w:,}' for w in wins)})." if wins else "."))
        # Minority-class recall at the smallest subset.
        real_runs = _runs(study, "real", subset=n, arch=a)
        syn_runs = _runs(study, "synthetic", subset=n, arch=a, filtered=False)
        if real_runs and syn_runs:
            rr, sr = per_class_recall(real_runs[0].run_dir, "val"), per_class_recall(syn_runs[0].run_dir, "val")
            parts = [f"{c} {rr[c]:.2f} → {sr[c]:.2f}" for c in _minority(study, n) if c in rr and c in sr]
            if parts:
                share = counts.get(str(n), {})
                tot = sum(share.values()) or 1
                minority = ", ".join(f"{c} ({share.get(c, 0) / tot:.0%} of the subset)" for c in _minority(study, n))
                gain = [sr[c] - rr[c] for c in _minority(study, n) if c in rr and c in sr]
                out.append(f"{a}, {n:,} real: minority-class recall (share of the class classified correctly) "
                           f"real → synthetic: {'; '.join(parts)}. Minority classes: {minority}. "
                           f"Mean change {sum(gain) / len(gain):+.2f}: synthetic training "
                           f"{'helped' if sum(gain) > 0 else 'did not help'} the minority classes.")
    # 2. Privacy filter.
    for a in archs[:1]:
        for n in subsets[:1]:
            s, f = (_val(study, "synthetic", subset=n, arch=a, filtered=x) for x in (False, True))
            if s is not None and f is not None:
                priv = study.get(f"privacy-n{n}")
                filt = ((read_json(priv.run_dir / "privacy.json") or {}).get("filtered") or {}) if priv else {}
                note = " (the filter removed no image, so both sets are the same)" if filt.get("dropped") == 0 else \
                    (f" (the filter removed {filt['dropped']} images)" if filt.get("dropped") else "")
                out.append(f"{a}, {n:,} real: training on the privacy-filtered synthetic set gave AUPRC {f:.3f} "
                           f"vs {s:.3f} unfiltered ({f - s:+.3f}){note}.")
    # 3. Mixing.
    for a in archs:
        for n in subsets:
            base = _val(study, "real", subset=n, arch=a)
            mixes = [(r.meta["fraction"], metric_summary(r.run_dir, "val", METRIC)[0])
                     for r in _runs(study, "mixing", subset=n, arch=a)]
            mixes = [m for m in mixes if m[1] is not None]
            if base is None or not mixes:
                continue
            f, best = max(mixes, key=lambda m: m[1])
            if best > base:
                out.append(f"{a}, {n:,} real: the best mix adds synthetic images worth {f:.0%} of the real size "
                           f"(AUPRC {best:.3f}, {best - base:+.3f} over real only {base:.3f}).")
            else:
                out.append(f"{a}, {n:,} real: no mix beat real only ({base:.3f}); the best, {f:.0%} synthetic, "
                           f"reached {best:.3f} ({best - base:+.3f}).")
    # 4. Upsampling and SMOTE vs synthetic at the smallest subset.
    for a in archs[:1]:
        n = subsets[0] if subsets else None
        vals = {"real": _val(study, "real", subset=n, arch=a),
                "upsampled to the majority class": _val(study, "upsampling", subset=n, arch=a, target="majority"),
                "SMOTE": _val(study, "upsampling", subset=n, arch=a, target="smote"),
                "synthetic": _val(study, "synthetic", subset=n, arch=a, filtered=False)}
        for r in _runs(study, "upsampling", subset=n, arch=a):
            if isinstance(r.meta.get("target"), int):
                vals[f"upsampled to {r.meta['target']:,}"] = metric_summary(r.run_dir, "val", METRIC)[0]
        vals = {k: v for k, v in vals.items() if v is not None}
        if len(vals) > 2:
            ranked = sorted(vals.items(), key=lambda kv: -kv[1])
            out.append(f"{a}, {n:,} real, ranking of training sets by AUPRC: "
                       + "; ".join(f"{k} {v:.3f}" for k, v in ranked) + ".")
    # 5. Diffusion: fidelity and ablation.
    fids = []
    for s in study.by_experiment("synthetic"):
        if s.name.startswith("fidelity-"):
            m = fid_metrics(read_json(s.run_dir / "fidelity.json"))
            name = "inception" if "inception" in m else next(iter(m), None)
            if name and m[name]["fid"] is not None:
                fids.append((s.meta.get("subset", 0), name, m[name]["fid"], m[name]["floor_fid"]))
    if fids:
        out.append("FID of each synthetic set against its real training subset: "
                   + "; ".join(f"{v:.2f} with {name} features (DDPM on {n:,}"
                               + (f"; real-vs-real floor {fl:.2f})" if fl is not None else ")")
                               for n, name, v, fl in fids) + ".")
    sizes = study.config.get("experiments", {}).get("ablation_samples", [])
    abl = []
    for s in study.by_experiment("ablation"):
        if s.name.endswith("-fidelity") and sizes:
            curve = dict(fid_curve(read_json(s.run_dir / "fidelity.json"), "fid_vs_samples", "n").get("inception", []))
            if curve.get(float(max(sizes))) is not None:
                abl.append((s.meta.get("variant"), curve[float(max(sizes))]))
    if abl:
        best = min(abl, key=lambda x: x[1])
        out.append(f"Ablation: at {max(sizes):,} samples the lowest Inception FID is {best[1]:.2f}, with {best[0]} "
                   f"(the thesis found learned σ + linear best, 4.56 at 10k).")
    # 6. Privacy flags.
    for s in study.by_experiment("synthetic"):
        if not s.name.startswith("privacy-"):
            continue
        d = read_json(s.run_dir / "privacy.json") or {}
        frac, cal = (d.get("flagged") or {}).get("fraction"), (d.get("calibration") or {}).get("fraction")
        if frac is not None:
            out.append(f"Privacy, DDPM on {s.meta.get('subset', 0):,} real: {frac:.1%} of synthetic images were flagged "
                       f"as too close to a training image" + (f" (vs {cal:.1%} of held-out real images, the rule's "
                                                             "false-positive rate)." if cal is not None else "."))
    # 7. Domain shift.
    for s in study.by_experiment("final"):
        test, shift = (metric_summary(s.run_dir, e, METRIC)[0] for e in ("test", "shift"))
        if test is not None and shift is not None:
            rec = per_class_recall(s.run_dir, "shift")
            worst = min(rec, key=rec.get) if rec else None
            what = (f"{s.meta['subset']:,} real + {s.meta['fraction']:.0%} synthetic" if "fraction" in s.meta
                    else s.name)
            out.append(f"Final model ({s.meta.get('arch', '')}, {what}): test AUPRC {test:.3f}, domain-shift AUPRC "
                       f"{shift:.3f} ({shift - test:+.3f})" + (f"; the class hurt most by the shift is {worst} "
                                                               f"(recall {rec[worst]:.2f})." if worst else "."))
    return out
