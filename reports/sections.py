"""The report's sections: each reads run-directory files and returns HTML plus its tables.

A section whose experiment did not run (or whose files are missing) says so and returns no
tables; nothing here raises on absent inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from echosynth.reports import figures
from echosynth.reports.classification import METRIC, classification  # noqa: F401  (a section like the others)
from echosynth.reports.collect import (
    Study,
    eval_sets,
    finite,
    gate_of,
    grid,
    load_real,
    load_samples,
    metric_summary,
    read_json_or_none,
    read_jsonl,
)
from echosynth.reports.render import Table, absent, array_png, esc, fmt, img_file, img_tag, mean_sd


def flat_scalars(d, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested JSON as {'a.b': value}."""
    out: dict[str, float] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flat_scalars(v, f"{prefix}{k}."))
    elif not isinstance(d, bool) and finite(d) is not None:
        out[prefix.rstrip(".")] = float(d)
    return out


FID_KEYS = ("fid", "kid", "precision", "recall", "density", "coverage")


def fid_metrics(fid_json: dict | None) -> dict[str, dict[str, float | None]]:
    """{extractor: {fid, kid, precision, recall, density, coverage, floor_fid}} from fidelity.json."""
    out = {}
    for name, m in ((fid_json or {}).get("metrics") or {}).items():
        overall = (m or {}).get("overall") or {}
        fake, floor = overall.get("fake") or {}, overall.get("floor") or {}
        out[name] = {k: finite(fake.get(k)) for k in FID_KEYS} | {"floor_fid": finite(floor.get("fid"))}
    return out


def fid_curve(fid_json: dict | None, curve: str, x: str) -> dict[str, list[tuple[float, float]]]:
    """{extractor: [(x, fid), ...]} of fidelity.json's fid_vs_samples (x='n') or fid_vs_checkpoint (x='step')."""
    curves = ((fid_json or {}).get("curves") or {}).get(curve) or {}
    return {name: sorted((float(p[x]), float(p["fid"])) for p in pts if finite(p.get("fid")) is not None)
            for name, pts in curves.items() if pts}


def _enlarged(png: Path, factor: float = 1.6, cap: int = 1100) -> int | None:
    """Display width of a PNG at `factor` × its own width (at most `cap` px), from its IHDR header."""
    try:
        head = Path(png).read_bytes()[:24]
    except OSError:
        return None
    return min(cap, int(int.from_bytes(head[16:20], "big") * factor)) if head[12:16] == b"IHDR" else None


def _scale(size: int) -> int:
    return max(1, 64 // max(1, size))


# ----------------------------------------------------------------------------------------------
# Dataset


def dataset(study: Study) -> tuple[str, list[Table]]:
    """Counts per view × source × split (Tables 3.1–3.4) and real sample grids per source."""
    info = read_json_or_none(study.split_dir / "splits.json")
    if not info:
        return absent("Dataset", f"no splits.json in {study.split_dir} (the data stages did not run)"), []
    rows = info.get("by_view_source_split", [])
    splits = [s for s in ("train", "val", "test", "shift") if any(r["split"] == s for r in rows)]
    keys = sorted({(r["view"], r["source"]) for r in rows})
    t = Table("dataset_counts", "Images per view × source × split (cf. thesis Tables 3.1–3.3)",
              ["view", "source", *splits, "total"])
    for v, s in keys:
        counts = [sum(r["count"] for r in rows if (r["view"], r["source"], r["split"]) == (v, s, sp)) for sp in splits]
        t.rows.append([v, s, *counts, sum(counts)])
    t.rows.append(["total", "", *[sum(r["count"] for r in rows if r["split"] == sp) for sp in splits],
                   sum(r["count"] for r in rows)])
    sub = info.get("subset_counts", {})
    views = sorted({v for c in sub.values() for v in c})
    t2 = Table("subset_counts", "Nested real training subsets per view (cf. Table 3.4)", ["subset", *views, "total"])
    for size, c in sorted(sub.items(), key=lambda kv: int(kv[0])):
        t2.rows.append([int(size), *[c.get(v, 0) for v in views], sum(c.values())])
    html = [f"<p>{fmt(info.get('n_images'))} images of {fmt(info.get('n_patients'))} patients; "
            f"split seed {esc(info.get('seed'))}, fractions {esc(info.get('fractions'))}, "
            f"held-out sources {esc(', '.join(info.get('holdout_sources', [])) or 'none')}.</p>",
            t.to_html(), t2.to_html(), "<h3>Real images per source (first rows of each)</h3>"]
    for source, imgs in load_real(study.split_dir / "manifest.csv", 8, by="source").items():
        html.append(img_tag(array_png(grid(imgs), _scale(imgs.shape[1])), f"source {source}"))
    return "".join(html), [t, t2]


# ----------------------------------------------------------------------------------------------
# Diffusion


def diffusion(study: Study) -> tuple[str, list[Table]]:
    """Training curves, FID per subset, sample grids (real and synthetic side by side), item-5 curves."""
    ddpms = [s for s in study.by_experiment("synthetic") if s.name.startswith("ddpm-")]
    fids = [s for s in study.by_experiment("synthetic") if s.name.startswith("fidelity-")]
    html, tables = [], []
    if not ddpms:
        html.append(absent("Diffusion models", "no DDPM was trained in this study (experiments.synthetic off "
                           "or not run yet)"))
    for s in ddpms:
        stats = read_jsonl(s.run_dir / "stats.jsonl")
        if stats:
            last = stats[-1]
            ips = [r.get("images/s") or r.get("images_per_s") for r in stats]
            ips = [x for x in ips if finite(x)]
            html.append(img_tag(figures.training_curves(stats, s.name),
                                f"{s.name}: {len(stats)} logged steps, last loss {fmt(finite(last.get('loss')))}"
                                + (f", {np.median(ips):.1f} images/s" if ips else "")))
        grids = sorted((s.run_dir / "samples").glob("*.png"))
        if grids:
            html.append(img_file(grids[-1], f"{s.name}: training sample grid {grids[-1].name}", width=320))
    if fids:
        t = Table("fidelity", "Fidelity of each balanced synthetic set against its real training subset "
                  "(floor: real training vs real validation images; class ratio: (judge accuracy on synthetic − 1/K) "
                  "/ (judge balanced accuracy on real validation − 1/K), 95% bootstrap interval; outside: mean "
                  "intensity outside the real frames' scan sector, 0–255)",
                  ["subset", "features", *FID_KEYS, "floor FID", "class ratio", "ratio 95%", "judge acc synthetic",
                   "judge bacc real", "outside synthetic", "outside real", "gate"])
        for s in fids:
            data = read_json_or_none(s.run_dir / "fidelity.json") or {}
            cf, sf = data.get("class_fidelity") or {}, data.get("sector_fidelity") or {}
            ci = cf.get("ratio_ci")
            extra = [finite(cf.get("ratio")), f"{ci[0]:.2f} to {ci[1]:.2f}" if ci else None, finite(cf.get("acc_syn")),
                     finite(cf.get("bacc_real")), finite(sf.get("outside_mean_fake")), finite(sf.get("outside_mean_real")),
                     gate_of(data)["status"]]
            for name, m in fid_metrics(data).items():
                t.rows.append([s.meta.get("subset"), name, *[m[k] for k in FID_KEYS], m["floor_fid"], *extra])
        tables.append(t)
        html.append(t.to_html())
    for s in study.by_experiment("synthetic"):
        if not s.name.startswith("sample-"):
            continue
        n = s.meta.get("subset")
        html.append(f"<h3>Real and synthetic, per class (DDPM trained on {fmt(n)} real)</h3>")
        fid = study.get(f"fidelity-n{n}")
        grid_png = fid.run_dir / "class_grid.png" if fid is not None and fid.done else None
        if grid_png is not None and grid_png.is_file():
            cf = (read_json_or_none(fid.run_dir / "fidelity.json") or {}).get("class_fidelity") or {}
            note = (f"; judge (trained on real) labels {cf['acc_syn']:.0%} of synthetic images with their conditioning "
                    f"class on average, {cf['bacc_real']:.0%} of real validation images (balanced)"
                    if finite(cf.get("acc_syn")) is not None and finite(cf.get("bacc_real")) is not None else "")
            html.append(img_file(grid_png, f"{s.name}: synthetic (left) beside real validation images (right) of "
                                           f"the same class{note}"))
            continue
        classes, synth = load_samples(s.run_dir, 8)
        real = load_real(study.split_dir / f"train_{n}.csv", 8) or load_real(study.split_dir / "train.csv", 8)
        for c in classes:
            if c in real:
                html.append(img_tag(array_png(grid(real[c]), _scale(real[c].shape[1])), f"{c} real"))
            if c in synth:
                html.append(img_tag(array_png(grid(synth[c]), _scale(synth[c].shape[1])), f"{c} synthetic"))
            html.append("<br>")
    h, t = diffusion_curves(study)
    return "".join(html) + h, tables + t


def diffusion_curves(study: Study) -> tuple[str, list[Table]]:
    """Table 5.2 (variance × schedule FID at two sample sizes), Fig 5.1 and Fig 5.2."""
    html, tables = ["<h3>Variance × schedule ablation (Table 5.2)</h3>"], []
    abl = [s for s in study.by_experiment("ablation") if s.name.endswith("-fidelity")]
    if abl:
        sizes = study.config.get("experiments", {}).get("ablation_samples", [])
        t = Table("ablation_fid", "Inception FID by variance and noise schedule at two sample sizes",
                  ["variant", *[f"FID @ {k:,}" for k in sizes]])
        for s in abl:
            curve = dict(fid_curve(read_json_or_none(s.run_dir / "fidelity.json"), "fid_vs_samples", "n").get("inception", []))
            t.rows.append([s.meta.get("variant"), *[curve.get(float(k)) for k in sizes]])
        for j in range(1, len(t.columns)):
            vals = [(r[j], i) for i, r in enumerate(t.rows) if r[j] is not None]
            if vals:
                t.highlight.add((min(vals)[1], j))
        tables.append(t)
        html.append(t.to_html())
    else:
        html.append(absent("Ablation", "not run (experiments.ablation off; see configs/study/ablation.yaml)"))
    for stage, curve, x, title, xlabel, stem, exp in (
            ("samplesize-fidelity", "fid_vs_samples", "n", "FID vs sample size (Fig 5.1)", "synthetic images",
             "fid_vs_sample_size", "sample_size"),
            ("trainingtime-fidelity", "fid_vs_checkpoint", "step", "FID vs training steps (Fig 5.2)",
             "DDPM training steps", "fid_vs_training_steps", "training_time")):
        html.append(f"<h3>{esc(title)}</h3>")
        s = study.get(stage)
        curves = fid_curve(read_json_or_none(s.run_dir / "fidelity.json"), curve, x) if s and s.done else {}
        if not curves:
            html.append(absent(title, f"not run (experiments.{exp} empty; see configs/study/"
                                      f"{exp.replace('_', '-')}.yaml)"))
            continue
        t = Table(stem, title, [x, *curves])
        xs = sorted({p[0] for pts in curves.values() for p in pts})
        t.rows = [[int(v), *[dict(pts).get(v) for pts in curves.values()]] for v in xs]
        tables.append(t)
        series = {name: ([p[0] for p in pts], [p[1] for p in pts], [None] * len(pts)) for name, pts in curves.items()}
        html += [img_tag(figures.lines(series, xlabel, "FID", title)), t.to_html()]
    return "".join(html), tables


# ----------------------------------------------------------------------------------------------
# Privacy


def privacy(study: Study) -> tuple[str, list[Table]]:
    """Flagged fractions (synthetic vs the held-out calibration), distance histograms, closest pairs."""
    runs = [s for s in study.by_experiment("synthetic") if s.name.startswith("privacy-")]
    if not runs:
        return absent("Privacy audit", "not run (experiments.synthetic off or not run yet)"), []
    data = {s.name: read_json_or_none(s.run_dir / "privacy.json") or {} for s in runs}
    spaces = sorted({k for d in data.values() for k in ((d.get("flagged") or {}).get("by") or {})})
    t = Table("privacy", "Synthetic images flagged as copies of a training image (nearest-neighbour audit; "
              "thresholds calibrated so that few held-out real images are flagged)",
              ["subset", "synthetic", "flagged", "flagged share", *[f"by {k}" for k in spaces],
               "held-out flagged share", "kept after filter"])
    for s in runs:
        d = data[s.name]
        fl, cal, filt = d.get("flagged") or {}, d.get("calibration") or {}, d.get("filtered") or {}
        t.rows.append([s.meta.get("subset"), fl.get("n"), fl.get("count"), finite(fl.get("fraction")),
                       *[finite((fl.get("by") or {}).get(k)) for k in spaces], finite(cal.get("fraction")),
                       filt.get("kept")])
    html = [t.to_html()]
    for s in runs:
        for note in data[s.name].get("notes") or []:
            html.append(f"<p class=caption>{esc(s.name)}: {esc(note)}</p>")
        mia = data[s.name].get("membership")
        if isinstance(mia, dict):
            auc = next((v for k, v in flat_scalars(mia).items() if k.endswith("auc")), None)
            if auc is not None:
                html.append(f"<p>{esc(s.name)}: membership-inference attack AUC {auc:.3f} (0.5 = chance).</p>")
        for png in sorted(s.run_dir.glob("*.png")):
            # closest pairs enlarged: their captions are drawn into the image in a small bitmap font
            html.append(img_file(png, f"{s.name}: {png.stem}", width=_enlarged(png) if png.stem.startswith("closest") else 420))
    return "".join(html), [t]


# ----------------------------------------------------------------------------------------------
# Features, quality, provenance


def features(study: Study) -> tuple[str, list[Table]]:
    """Feature-map embeddings (t-SNE of penultimate features, Fig 5.13/5.14)."""
    runs = study.by_experiment("features")
    if not runs:
        return absent("Feature maps", "not run (experiments.embed off or not run yet)"), []
    html = []
    for s in runs:
        pngs = sorted(s.run_dir.glob("*.png"))
        html += [img_file(p, f"{s.name}: {p.stem}", width=420) for p in pngs]
        if not pngs:
            html.append(absent(s.name, "wrote no figure"))
    return "".join(html), []


def quality(study: Study) -> tuple[str, list[Table]]:
    """The image-quality grader (view head + 0–10 grade head, CACTUS): view and grading metrics per set."""
    runs = study.by_experiment("quality")
    if not runs:
        return absent("Quality grading", "not run (experiments.quality off)"), []
    metrics = ("macro_auprc", "macro_f1", "grade_mse", "grade_mae", "grade_spearman")
    t = Table("quality", "Quality grader: view AUPRC / F1 and grade error (0–10 scale), mean ± sd over seeds",
              ["run", "eval set", *metrics])
    html = []
    for s in runs:
        for e in eval_sets(s.run_dir) or ["val"]:
            t.rows.append([s.name, e, *[mean_sd(*metric_summary(s.run_dir, e, m)) for m in metrics]])
        html += [img_file(p, f"{s.name}: {p.stem}", width=320) for p in sorted(Path(s.run_dir).glob("seed-*/*.png"))[:3]]
    return t.to_html() + "".join(html), [t]


def provenance(study: Study) -> tuple[str, list[Table]]:
    """Configs, versions, git SHA, hardware, time per stage."""
    import json

    prov = study.header.get("provenance", {})
    t = Table("timings", "Time per stage", ["stage", "experiment", "status", "seconds", "run dir"])
    for s in study.stages:
        t.rows.append([s.name, s.experiment, s.status, None if s.seconds is None else f"{s.seconds:.1f}",
                       str(s.run_dir.relative_to(study.dir)) if s.run_dir.is_relative_to(study.dir) else str(s.run_dir)])
    total = sum(s.seconds or 0 for s in study.stages)
    hw = prov.get("hardware", {})
    pk = prov.get("packages", {})
    html = [f"<p>git {esc(prov.get('git_sha'))}; host {esc(prov.get('hostname'))}; {esc(hw.get('platform'))}; "
            f"{esc(hw.get('cpu_count'))} CPUs; GPUs: {esc(', '.join(hw.get('cuda_devices') or []) or 'none')}; "
            f"Python {esc(hw.get('python'))}.</p>",
            "<p>" + ", ".join(f"{esc(k)} {esc(v)}" for k, v in pk.items() if v) + "</p>",
            f"<p>Total stage time {total:.0f} s ({total / 60:.1f} min).</p>", t.to_html(),
            "<h3>Study config</h3><pre>" + esc(json.dumps(study.config, indent=1)) + "</pre>"]
    return "".join(html), [t]
