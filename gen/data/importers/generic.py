"""Generic layouts for any other data: a folder per view, or a folder of clips with a label CSV.

`folder`: `ROOT/<view>/**/*.{png,jpg,jpeg,bmp,tif,dcm,avi,mp4,gif}` (DICOM also without a
suffix, recognised by its `DICM` magic). The view folder name is matched case-insensitively
to the manifest's views, with the aliases below. A file's patient is the DICOM PatientID when
it has one, else the file itself.

`videos`: `--labels FILE` (default `ROOT/labels.csv`) with a file column (file, path, filename,
video) relative to ROOT, a view column (view, label), and optionally patient_id (patient),
quality; every other column is kept as `meta_<name>`. A DICOM file without a patient in the
CSV takes its PatientID (prefixed by the source, as in folder).
"""

from __future__ import annotations

from pathlib import Path

from echosynth.gen.data.importers.base import (
    MISSING,
    UNKNOWN_LABEL,
    Item,
    excluded_row,
    relkey,
    safe_name,
)
from echosynth.gen.data.importers.readers import kind_of
from echosynth.gen.data.importers.tabular import find_column, parse_quality, read_table
from echosynth.gen.data.manifest import KNOWN_VIEWS

ALIASES = {"2CH": "A2C", "AP2": "A2C", "4CH": "A4C", "AP4": "A4C", "PL": "PLAX", "PLAX": "PLAX",
           "SAX": "PSAX", "SUBCOSTAL": "SC"}


def canonical_view(name: str) -> str | None:
    """A view label as a manifest view (KNOWN_VIEWS, case-insensitive, plus aliases) or None."""
    s = str(name).strip()
    by_upper = {v.upper(): v for v in KNOWN_VIEWS}
    return by_upper.get(s.upper()) or ALIASES.get(s.upper())


def _dicom_patient(path: Path) -> str:
    try:
        import pydicom

        return str(pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["PatientID"]).get("PatientID", "")).strip()
    except Exception:  # an unreadable header is reported later when the pixels are decoded
        return ""


def scan_folder(cfg, source: str) -> tuple[list[Item], list[dict]]:
    """One item per supported file in a view folder; files in other folders are unknown labels."""
    root = Path(cfg.src)
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subdirs:
        raise FileNotFoundError(f"{root}: expected one folder per view (e.g. {root}/A4C/*.png)")
    items, excluded = [], []
    for d in subdirs:
        view = canonical_view(d.name)
        for p in sorted(d.rglob("*")):
            if not p.is_file() or p.name.startswith("."):
                continue
            kind = kind_of(p)
            if kind is None:
                continue  # not an image, video or DICOM file: ignored, not excluded (e.g. notes)
            key = relkey(p, root)
            if view is None:
                excluded.append(excluded_row(key, UNKNOWN_LABEL, f"folder {d.name!r} is not a view "
                                             f"({', '.join(KNOWN_VIEWS)} or {', '.join(sorted(ALIASES))})"))
                continue
            pid = _dicom_patient(p) if kind == "dicom" else ""
            items.append(Item(key=key, path=str(p), view=view,
                              patient_id=f"{source}-{safe_name(pid) if pid else safe_name(key)}"))
    return items, excluded


def scan_videos(cfg, source: str) -> tuple[list[Item], list[dict]]:
    """One item per row of the label CSV."""
    root = Path(cfg.src)
    csv = Path(cfg.labels) if cfg.labels else root / "labels.csv"
    table = read_table(csv)
    fcol = find_column(table, ("file", "path", "filename", "video"), str(csv), "file")
    vcol = find_column(table, ("view", "label"), str(csv), "view")
    pcol = find_column(table, ("patient_id", "patient"), str(csv), "patient", required=False)
    qcol = find_column(table, ("quality", "grade"), str(csv), "quality", required=False)
    meta_cols = [c for c in table.columns if c not in (fcol, vcol, pcol, qcol)]
    items, excluded = [], []
    for row_no, row in enumerate(table.to_dict("records"), start=2):
        rel = str(row[fcol]).strip()
        where = f"{csv.name} row {row_no}"
        view = canonical_view(row[vcol])
        if view is None:
            excluded.append(excluded_row(rel, UNKNOWN_LABEL, f"{where}: view {row[vcol]!r} is not one of {', '.join(KNOWN_VIEWS)}"))
            continue
        path = root / rel
        if not rel or not path.is_file():
            excluded.append(excluded_row(rel, MISSING, f"{where}: file not found under {root}", view))
            continue
        quality, problem = parse_quality(row[qcol], where) if qcol else (None, "")
        meta = {safe_name(c).lower(): row[c] for c in meta_cols}
        if problem:
            meta["grade_note"] = problem
        pid = str(row[pcol]).strip() if pcol else ""
        if not pid and kind_of(path) == "dicom":
            pid = _dicom_patient(path)
        key = relkey(path, root)
        items.append(Item(key=key, path=str(path), view=view, quality=quality, meta=meta,
                          patient_id=f"{source}-{safe_name(pid) if pid else safe_name(key)}"))
    return items, excluded
