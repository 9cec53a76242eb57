"""EchoNet-Dynamic (A4C videos, FileList.csv) and EchoNet-LVH (PLAX videos, MeasurementsList.csv).

Both ship AVIs already cropped and masked to the sector. The dataset's own split column is kept
as `meta_original_split`; echosynth re-makes splits by patient like for every other source.
Neither names patients, so each video is its own patient (`dynamic-<FileName>`, `lvh-<hash>`).
"""

from __future__ import annotations

from pathlib import Path

from echosynth.gen.data.importers.base import MISSING, Item, excluded_row, relkey
from echosynth.gen.data.importers.tabular import read_table


def _video_index(root: Path) -> dict[str, list[Path]]:
    """Lower-case stem -> AVI files anywhere under root (LVH's Batch* folders are not in the CSV)."""
    index: dict[str, list[Path]] = {}
    for p in root.rglob("*"):
        if p.suffix.lower() == ".avi":
            index.setdefault(p.stem.lower(), []).append(p)
    return index


def scan_dynamic(cfg, source: str) -> tuple[list[Item], list[dict]]:
    """One A4C item per FileList.csv row whose video exists in Videos/."""
    root = Path(cfg.src)
    csv = Path(cfg.labels) if cfg.labels else root / "FileList.csv"
    table = read_table(csv, required=("FileName",))
    videos = root / "Videos"
    index = _video_index(videos if videos.is_dir() else root)
    items, excluded = [], []
    for row_no, row in enumerate(table.to_dict("records"), start=2):
        name = str(row["FileName"]).strip()
        stem = name[:-4] if name.lower().endswith(".avi") else name
        found = index.get(stem.lower(), [])
        if not found:
            excluded.append(excluded_row(f"Videos/{stem}.avi", MISSING, f"{csv.name} row {row_no}: video not found",
                                         "A4C", f"{source}-{stem}"))
            continue
        meta = {"original_split": row.get("Split", "")}
        for col in ("EF", "ESV", "EDV", "FPS"):
            if col in row:
                meta[col.lower()] = row[col]
        items.append(Item(key=relkey(found[0], root), path=str(found[0]), view="A4C",
                          patient_id=f"{source}-{stem}", video_id=f"{source}-{stem}", meta=meta))
    return items, excluded


def scan_lvh(cfg, source: str) -> tuple[list[Item], list[dict]]:
    """One PLAX item per distinct HashedFileName of MeasurementsList.csv, found in Batch*/."""
    root = Path(cfg.src)
    csv = Path(cfg.labels) if cfg.labels else root / "MeasurementsList.csv"
    table = read_table(csv, required=("HashedFileName",))
    index = _video_index(root)
    items, excluded = [], []
    seen = set()
    for row_no, row in enumerate(table.to_dict("records"), start=2):
        stem = str(row["HashedFileName"]).strip()
        stem = stem[:-4] if stem.lower().endswith(".avi") else stem
        if not stem or stem in seen:  # one row per caliper measurement: many per video
            continue
        seen.add(stem)
        found = index.get(stem.lower(), [])
        if not found:
            excluded.append(excluded_row(f"{stem}.avi", MISSING, f"{csv.name} row {row_no}: video not found in any "
                                         f"folder under {root}", "PLAX", f"{source}-{stem}"))
            continue
        meta = {"original_split": row.get("split", "")}
        items.append(Item(key=relkey(found[0], root), path=str(found[0]), view="PLAX",
                          patient_id=f"{source}-{stem}", video_id=f"{source}-{stem}", meta=meta))
    return items, excluded
