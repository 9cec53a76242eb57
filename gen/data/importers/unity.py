"""Unity Imaging: PNG frames in png-cache/, grouped by the video hash in their names.

Frames are `png-cache/<aa>/<bb>/<cc>/<aa>-<64 hex>-<NNNN>.png` (aa = 01 development, 02
external). The view labels come from `--labels FILE`, else the first CSV under ROOT with a file
and a view column (the public `view_index.csv` has `file,view`). A label row names a frame
(`01-<hash>-0000`, with or without `.png` or folders) or a whole video (`01-<hash>`: all its
frames). There are no patient ids: the video is the patient (`unity-01-<hash>`), as the Unity
authors split by video.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from echosynth.gen.data import VIEWS
from echosynth.gen.data.importers.base import MISSING, UNKNOWN_LABEL, Item, excluded_row, relkey
from echosynth.gen.data.importers.tabular import find_column, read_table

FRAME_RE = re.compile(r"^(\d{2}-[0-9a-f]{64})-(\d{4})$", re.IGNORECASE)
VIDEO_RE = re.compile(r"^\d{2}-[0-9a-f]{64}$", re.IGNORECASE)


def _labels_file(cfg, root: Path) -> Path:
    if cfg.labels:
        return Path(cfg.labels)
    for p in sorted(root.rglob("*.csv")):
        try:
            cols = {c.lower() for c in pd.read_csv(p, nrows=0).columns}
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue
        if cols & {"file", "filename", "frame"} and cols & {"view", "label"}:
            return p
    raise FileNotFoundError(f"{root}: no Unity view label CSV found (e.g. view_index.csv with columns file,view); "
                            "pass --labels FILE")


def scan(cfg, source: str) -> tuple[list[Item], list[dict]]:
    """One item per labelled frame."""
    root = Path(cfg.src)
    csv = _labels_file(cfg, root)
    table = read_table(csv)
    fcol = find_column(table, ("file", "filename", "frame"), str(csv), "file")
    vcol = find_column(table, ("view", "label"), str(csv), "view")
    cache = root / "png-cache"
    frames: dict[str, Path] = {}
    by_video: dict[str, list[str]] = {}
    for p in (cache if cache.is_dir() else root).rglob("*"):
        m = FRAME_RE.match(p.stem) if p.suffix.lower() == ".png" else None
        if m:
            frames[p.stem.lower()] = p
            by_video.setdefault(m.group(1).lower(), []).append(p.stem.lower())
    items, excluded = [], []
    for row_no, row in enumerate(table.to_dict("records"), start=2):
        code = Path(str(row[fcol]).strip()).name
        code = code[:-4] if code.lower().endswith(".png") else code
        code = code.lower()
        view = str(row[vcol]).strip().upper()
        where = f"{csv.name} row {row_no}"
        codes = sorted(by_video.get(code, [])) if VIDEO_RE.match(code) else [code]
        if view not in VIEWS:
            excluded.append(excluded_row(code, UNKNOWN_LABEL, f"{where}: view {row[vcol]!r} is not one of {', '.join(VIEWS)}"))
            continue
        if not codes or codes[0] not in frames:
            excluded.append(excluded_row(code, MISSING, f"{where}: no PNG frame {code} under {root}", view))
            continue
        for c in codes:
            video, frame_no = FRAME_RE.match(c).groups()
            path = frames[c]
            vid = f"{source}-{video}"
            items.append(Item(key=relkey(path, root), path=str(path), view=view, patient_id=vid, video_id=vid,
                              frame=int(frame_no)))
    return items, excluded
