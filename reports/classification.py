"""The report's classification section: each arm's budget (images, optimizer steps, epochs), its
validation curve and its classifier-gate verdict on test; the Table 5.4 grid (validation: the split that
selected the checkpoints, labelled so), AUPRC vs real size, mixing, upsampling / SMOTE, confusion
matrices and the final model on test and domain shift."""

from __future__ import annotations

from echosynth.reports import figures
from echosynth.reports.classifier_gate import classifier_gate
from echosynth.reports.collect import (
    Study,
    eval_sets,
    mean_confusion,
    metric_summary,
    read_jsonl,
    seed_dirs,
)
from echosynth.reports.compare import training_info
from echosynth.reports.render import Table, absent, esc, img_tag, mean_sd

METRIC = "macro_auprc"


def _clf_runs(study: Study, experiment: str, **meta) -> list:
    return [s for s in study.by_experiment(experiment) if all(s.meta.get(k) == v for k, v in meta.items())]


def classification(study: Study) -> tuple[str, list[Table]]:
    """Table 5.4 grid, Fig 5.11, mixing (Fig 5.17), upsampling/SMOTE (Fig 5.18/5.19), confusion, shift."""
    html, tables = [], []
    archs = list(dict.fromkeys(s.meta.get("arch") for s in study.stages if s.meta.get("arch")))
    subsets = study.config.get("dataset", {}).get("subsets", [])
    real_runs, synth_runs = _clf_runs(study, "real"), _clf_runs(study, "synthetic", filtered=False)
    if not real_runs and not synth_runs:
        return absent("Classification", "no classifier finished yet"), []
    html += _arms(study, tables)
    cols = ["real size"]
    for a in archs:
        cols += [f"{a} real", f"{a} synth", f"{a} synth (filtered)"]
    t = Table("table_5_4", "Validation macro AUPRC, mean ± sd over seeds (cf. Table 5.4). Validation selected each "
              "run's checkpoint, so these numbers lean optimistic; the findings use the test split", cols)
    t_num = Table("table_5_4_numeric", "Table 5.4 numbers", ["subset", "arch", "training", "mean", "sd", "n"])
    for n in subsets:
        row = [n]
        for a in archs:
            for exp, filt in (("real", None), ("synthetic", False), ("synthetic", True)):
                meta = {"subset": n, "arch": a} | ({} if filt is None else {"filtered": filt})
                runs = _clf_runs(study, exp, **meta)
                m, sd, k = metric_summary(runs[0].run_dir, "val", METRIC) if runs else (None, None, 0)
                row.append(mean_sd(m, sd, k))
                label = exp if filt is None else ("synthetic-filtered" if filt else "synthetic")
                if m is not None:
                    t_num.rows.append([n, a, label, m, sd, k])
        t.rows.append(row)
    tables += [t, t_num]
    html.append(t.to_html())
    series = {}
    for a in archs:
        for label, exp, extra in (("real", "real", {}), ("synthetic", "synthetic", {"filtered": False})):
            pts = [(n, *metric_summary(r[0].run_dir, "val", METRIC)[:2]) for n in subsets
                   if (r := _clf_runs(study, exp, subset=n, arch=a, **extra))]
            if pts:
                series[f"{a} {label}"] = tuple(map(list, zip(*pts)))
    if series:
        html.append(img_tag(figures.lines(series, "real training images", "val macro AUPRC",
                                          "AUPRC vs real size (Fig 5.11)", logx=len(subsets) > 2)))
    html += _mixing(study, subsets, archs, tables)
    html += _upsampling(study, subsets, archs, tables)
    html += _confusions(study, subsets, archs)
    html += _shift(study, tables)
    return "".join(html), tables


def _curve(run_dir) -> tuple[list[float], list[float], list[float]] | None:
    """Seed-mean and sd of validation balanced accuracy against optimizer steps (stats.jsonl of each seed)."""
    import numpy as np

    per_seed = []
    for d in seed_dirs(run_dir):
        rows = [r for r in read_jsonl(d / "stats.jsonl") if r.get("phase", "view") == "view"
                and r.get("val_balanced_accuracy") is not None]
        if rows:
            per_seed.append({int(r.get("step", r.get("epoch", i + 1))): r["val_balanced_accuracy"] for i, r in enumerate(rows)})
    if not per_seed:
        return None
    steps = sorted(set.intersection(*(set(p) for p in per_seed)))
    vals = np.array([[p[s] for s in steps] for p in per_seed])
    return steps, list(vals.mean(0)), list(vals.std(0, ddof=1)) if len(per_seed) > 1 else [None] * len(steps)


def _arms(study: Study, tables) -> list[str]:
    """Per classifier arm: images, optimizer steps, epochs, how the checkpoint was chosen, the test numbers and
    the classifier gate; then every arm's validation curve."""
    html = ["<h3>Classifier arms: budgets, curves and the classifier gate</h3>"]
    t = Table("classifier_arms", "Each arm's training budget and its scores on the findings split (test: it selected "
              "no checkpoint); balanced accuracy with its 95% interval (bootstrap over images nested in seeds)",
              ["arm", "training set", "images", "optimizer steps", "epochs", "checkpoint", "seeds", "split",
               "balanced accuracy [95%]", "macro AUPRC", "gate"])
    series = {}
    for s in study.stages:
        if not (s.done and s.meta.get("arch") and s.meta.get("task") != "quality"
                and (s.run_dir / "summary.json").is_file()):
            continue
        info = training_info(s.run_dir)
        steps = sorted(set((info.get("optimizer_steps") or {}).values()))
        chosen = (f"best on {info['selected_on']} (steps {', '.join(str(v) for v in (info.get('best_step') or {}).values())})"
                  if info.get("selected_on") else "last")
        g = classifier_gate(s.run_dir)
        split = g.get("eval_set") or "–"
        m, sd, k = metric_summary(s.run_dir, split, "macro_auprc") if g.get("eval_set") else (None, None, 0)
        ci = g.get("ci") or [None, None]
        bacc = ("–" if g["balanced_accuracy"] is None else f"{g['balanced_accuracy']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
                if ci[0] is not None else f"{g['balanced_accuracy']:.3f}")
        spec = s.meta.get("spec", "")
        kind = spec.split(":", 1)[0] if ":" in spec else s.experiment
        t.rows.append([s.name, f"{kind} {spec.split('/')[-1]}" if spec else s.experiment,
                       info.get("images"), "/".join(map(str, steps)) or "–", info.get("epochs"), chosen,
                       len(seed_dirs(s.run_dir)), split, bacc, mean_sd(m, sd, k), g["status"]])
        c = _curve(s.run_dir)
        if c is not None:
            series[s.name] = c
    if not t.rows:
        return html + [absent("Classifier arms", "no classifier finished yet")]
    tables.append(t)
    html.append(t.to_html())
    steps = {r[3] for r in t.rows if r[0] and "judge" not in r[0]}
    html.append(f"<p class=caption>{'Every compared arm got the same optimizer steps: ' + esc(next(iter(steps))) if len(steps) == 1 else 'The compared arms got different step counts: ' + esc(', '.join(sorted(steps))) + ' (rankings then measure steps as well as data)'}.</p>")
    if series:
        html.append(img_tag(figures.lines(series, "optimizer steps", "val balanced accuracy",
                                          "Validation curves (seed mean ± sd)", size=(7.0, 4.2))))
    return html


def _mixing(study: Study, subsets, archs, tables) -> list[str]:
    runs = _clf_runs(study, "mixing")
    html = ["<h3>Real + synthetic mixing (Fig 5.17)</h3>"]
    if not runs:
        return html + [absent("Mixing", "not run (experiments.mixing empty)")]
    t = Table("mixing", "Validation macro AUPRC of real + synthetic (fraction of the real size)",
              ["subset", "arch", "fraction", "synthetic images", "mean", "sd", "n"])
    series = {}
    for a in archs:
        for n in subsets:
            base = _clf_runs(study, "real", subset=n, arch=a)
            pts = [(0.0, *metric_summary(base[0].run_dir, "val", METRIC)[:2])] if base else []
            for s in sorted(_clf_runs(study, "mixing", subset=n, arch=a), key=lambda s: s.meta["fraction"]):
                m, sd, k = metric_summary(s.run_dir, "val", METRIC)
                f = s.meta["fraction"]
                t.rows.append([n, a, f, int(round(f * n)), m, sd, k])
                pts.append((f, m, sd))
            if len(pts) > 1:
                series[f"{a} n={n}"] = tuple(map(list, zip(*pts)))
    tables.append(t)
    return html + [img_tag(figures.lines(series, "synthetic fraction of real size", "val macro AUPRC",
                                         "Mixing real and synthetic")), t.to_html()]


def _upsampling(study: Study, subsets, archs, tables) -> list[str]:
    runs = _clf_runs(study, "upsampling")
    html = ["<h3>Upsampling and SMOTE baselines (Fig 5.18/5.19)</h3>"]
    if not runs:
        return html + [absent("Upsampling", "not run (experiments.upsampling and smote off)")]
    t = Table("upsampling", "Validation macro AUPRC: real vs upsampled vs SMOTE vs synthetic",
              ["subset", "arch", "training", "mean", "sd", "n"])
    groups: dict[str, dict] = {}
    for a in archs:
        for n in subsets:
            cands = [("real", _clf_runs(study, "real", subset=n, arch=a))]
            for s in _clf_runs(study, "upsampling", subset=n, arch=a):
                tgt = s.meta.get("target")
                total = s.meta.get("target_total")
                label = ("SMOTE" if tgt == "smote" else f"upsampled to {tgt}/class ({total:,} images)"
                         if isinstance(tgt, int) and isinstance(total, int) else f"upsampled to {tgt}")
                cands.append((label, [s]))
            cands.append(("synthetic", _clf_runs(study, "synthetic", subset=n, arch=a, filtered=False)))
            for label, rs in cands:
                if rs:
                    m, sd, k = metric_summary(rs[0].run_dir, "val", METRIC)
                    t.rows.append([n, a, label, m, sd, k])
                    groups.setdefault(f"{a} n={n}", {})[label.replace("upsampled to ", "up→")] = (m, sd)
    tables.append(t)
    return html + [img_tag(figures.bars(groups, "val macro AUPRC", "Upsampling vs synthetic")), t.to_html()]


def _confusions(study: Study, subsets, archs) -> list[str]:
    html = ["<h3>Confusion matrices at the smallest subset (validation, seed mean)</h3>"]
    if not subsets or not archs:
        return html
    n, a = subsets[0], archs[0]
    for label, exp, extra in (("real", "real", {}), ("synthetic", "synthetic", {"filtered": False})):
        rs = _clf_runs(study, exp, subset=n, arch=a, **extra)
        if rs:
            classes, cm = mean_confusion(rs[0].run_dir, "val")
            if cm is not None:
                html.append(img_tag(figures.confusion(cm, classes, f"{a}, {label}, n={n}")))
    return html


def _shift(study: Study, tables) -> list[str]:
    html = ["<h3>Final model: held-out test and domain shift (Fig 5.20/5.21)</h3>"]
    final = study.by_experiment("final")
    if not final:
        return html + [absent("Final model", "not run (experiments.final off or not run yet)")]
    s = final[0]
    sets = eval_sets(s.run_dir)
    t = Table("final_model", f"{s.name}: {s.meta.get('spec', '')}", ["eval set", "macro AUPRC", "macro F1",
                                                                       "balanced accuracy"])
    for e in sets:
        t.rows.append([e, *[mean_sd(*metric_summary(s.run_dir, e, m)) for m in
                            ("macro_auprc", "macro_f1", "balanced_accuracy")]])
    tables.append(t)
    html.append(t.to_html())
    for e in sets:
        classes, cm = mean_confusion(s.run_dir, e)
        if cm is not None:
            html.append(img_tag(figures.confusion(cm, classes, f"final model, {e}")))
    return html
