"""TMED2: 112×112 PNG stills with view labels in CSV files (Huang et al., Tufts).

Labels come from `--labels FILE`, else `ROOT/labels_per_image.csv`, else every CSV under ROOT
with `query_key` and `view_label` columns (the DEV*/TMED2_fold*_labeledpart.csv files). An
image is `ROOT/<SourceFolder>/<query_key>` when the CSV has `SourceFolder`, else the PNG of that
name found under ROOT (preferring folders not named `unlabeled`). The patient is the number
before `s` in `<patient>s<study>_<index>.png`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from echosynth.gen.data.importers.base import (
    MISSING,
    PER_PATIENT_LIMIT,
    UNKNOWN_LABEL,
    Item,
    excluded_row,
    relkey,
)
from echosynth.gen.data.importers.tabular import read_table
from echosynth.gen.data.preprocess import cap_per_group

VIEW_MAP = {"A2C": "A2C", "A4C": "A4C", "PLAX": "PLAX", "PSAX": "PSAX"}
KEY_RE = re.compile(r"^(\d+)s(\d+)_(\d+)\.png$", re.IGNORECASE)


def _label_files(cfg, root: Path) -> list[Path]:
    if cfg.labels:
        return [Path(cfg.labels)]
    default = root / "labels_per_image.csv"
    if default.is_file():
        return [default]
    found = []
    for p in sorted(root.rglob("*.csv")):
        try:
            cols = pd.read_csv(p, nrows=0).columns
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue
        if {"query_key", "view_label"} <= set(cols) and "unlabeled" not in p.name.lower():
            found.append(p)
    if not found:
        raise FileNotFoundError(f"{root}: no TMED2 label CSV found (labels_per_image.csv, or CSVs with "
                                "query_key and view_label columns); pass --labels FILE")
    return found


def _png_index(root: Path) -> dict[str, list[Path]]:
    index: dict[str, list[Path]] = {}
    for p in root.rglob("*"):
        if p.suffix.lower() == ".png":
            index.setdefault(p.name, []).append(p)
    return index


def scan(cfg, source: str) -> tuple[list[Item], list[dict]]:
    """Items for every labelled A2C/A4C/PLAX/PSAX image, capped per patient and view."""
    root = Path(cfg.src)
    items: list[Item] = []
    excluded: list[dict] = []
    index = None
    seen = set()
    for csv in _label_files(cfg, root):
        table = read_table(csv, required=("query_key", "view_label"))
        for row_no, row in enumerate(table.to_dict("records"), start=2):
            qk = str(row["query_key"]).strip()
            folder = str(row.get("SourceFolder", "") or "").strip()
            where = f"{csv.name} row {row_no}"
            m = KEY_RE.match(qk)
            view = VIEW_MAP.get(str(row["view_label"]).strip())
            if view is None or not m:
                reason = f"view label {row['view_label']!r} is not one of A2C, A4C, PLAX, PSAX" if m else \
                    f"query_key {qk!r} is not <patient>s<study>_<index>.png"
                excluded.append(excluded_row(f"{folder}/{qk}" if folder else qk, UNKNOWN_LABEL, f"{where}: {reason}"))
                continue
            path = None
            if folder:
                for cand in (root / folder / qk, root / folder / Path(folder).name / qk):
                    if cand.is_file():
                        path = cand
                        break
            else:
                index = _png_index(root) if index is None else index
                cands = index.get(qk, [])
                labelled = [p for p in cands if "unlabeled" not in p.as_posix().lower()] or cands
                path = labelled[0] if len(labelled) == 1 else None
                if len(labelled) > 1:
                    excluded.append(excluded_row(qk, MISSING, f"{where}: {len(labelled)} files named {qk}; "
                                                 "use the fold CSVs (with SourceFolder) to tell them apart"))
                    continue
            if path is None:
                excluded.append(excluded_row(f"{folder}/{qk}" if folder else qk, MISSING, f"{where}: image not found under {root}"))
                continue
            key = relkey(path, root)
            if key in seen:  # fold CSVs repeat rows across folds
                continue
            seen.add(key)
            meta = {"study": qk.split("_")[0], "diagnosis": row.get("diagnosis_label", "")}
            if "view_classifier_split" in row:
                meta["original_split"] = row["view_classifier_split"]
            items.append(Item(key=key, path=str(path), view=view, patient_id=f"{source}-{int(m.group(1))}", meta=meta))
    keep = cap_per_group([it.key for it in items], [f"{it.patient_id}/{it.view}" for it in items],
                         cfg.max_per_patient_view, cfg.seed)
    for it, k in zip(items, keep):
        if not k:
            excluded.append(excluded_row(it.key, PER_PATIENT_LIMIT, f"more than --max_per_patient_view "
                                         f"{cfg.max_per_patient_view} images of this patient and view", it.view, it.patient_id))
    return [it for it, k in zip(items, keep) if k], excluded
