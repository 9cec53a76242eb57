"""CACTUS: phantom still images in one folder per view class, with 0–10 grades in a CSV.

View folders are found anywhere under ROOT, matched case-insensitively: A4C, PL (-> PLAX),
PLAX, PSAV, PSMV (parasternal short-axis at aortic / mitral level, kept under their own names),
SC (subcostal) and Random. Other folders beside them are reported as unknown labels. Grades come
from `--labels FILE`, else the first CSV under ROOT with an image-name column and a
grade/score/quality column; they are matched to images by file name and go into `quality`.
The data come from a single phantom, so there are no patients: each image is its own
`patient_id` (`cactus-<view>-<name>`), which makes the patient split an image-level split.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from echosynth.gen.data.importers.base import UNKNOWN_LABEL, Item, excluded_row, relkey
from echosynth.gen.data.importers.readers import IMAGE_EXTS
from echosynth.gen.data.importers.tabular import find_column, parse_quality, read_table

VIEW_MAP = {"A4C": "A4C", "PL": "PLAX", "PLAX": "PLAX", "PSAV": "PSAV", "PSMV": "PSMV", "SC": "SC", "RANDOM": "Random"}
NAME_COLS = ("image", "image_name", "filename", "file", "name", "path")
GRADE_COLS = ("grade", "score", "quality")


def _grades(cfg, root: Path) -> tuple[dict[str, str], str]:
    """Image file name (lower case) -> grade text, and the CSV used ('' if none)."""
    files = [Path(cfg.labels)] if cfg.labels else sorted(root.rglob("*.csv"))
    for p in files:
        if not cfg.labels:
            try:
                cols = [c.lower() for c in pd.read_csv(p, nrows=0).columns]
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
                continue
            if not (any(any(n in c for n in NAME_COLS) for c in cols) and any(any(g in c for g in GRADE_COLS) for c in cols)):
                continue
        table = read_table(p)
        ncol = find_column(table, NAME_COLS, str(p), "image name")
        gcol = find_column(table, GRADE_COLS, str(p), "grade")
        return {Path(str(n).strip()).name.lower(): g for n, g in zip(table[ncol], table[gcol])}, p.name
    return {}, ""


def scan(cfg, source: str) -> tuple[list[Item], list[dict]]:
    """One item per image in a view folder, with its grade when the grades CSV has one."""
    root = Path(cfg.src)
    view_dirs = [d for d in sorted(root.rglob("*")) if d.is_dir() and d.name.upper() in VIEW_MAP]
    if not view_dirs:
        raise FileNotFoundError(f"{root}: no CACTUS view folders ({', '.join(sorted(VIEW_MAP))}) found")
    grades, grades_file = _grades(cfg, root)
    items, excluded = [], []
    parents = {d.parent for d in view_dirs}
    for parent in sorted(parents):
        for d in sorted(q for q in parent.iterdir() if q.is_dir() and q.name.upper() not in VIEW_MAP):
            for p in sorted(d.rglob("*")):
                if p.suffix.lower() in IMAGE_EXTS:
                    excluded.append(excluded_row(relkey(p, root), UNKNOWN_LABEL, f"folder {d.name!r} is not a CACTUS view"))
    for d in view_dirs:
        view = VIEW_MAP[d.name.upper()]
        for p in sorted(d.rglob("*")):
            if p.suffix.lower() not in IMAGE_EXTS:
                continue
            quality, problem = parse_quality(grades.get(p.name.lower(), ""), f"{grades_file} ({p.name})")
            meta = {"grade_note": problem} if problem else {}
            items.append(Item(key=relkey(p, root), path=str(p), view=view, quality=quality,
                              patient_id=f"{source}-{view}-{p.stem}", meta=meta))
    return items, excluded
