"""CAMUS: per-patient folders of 2CH/4CH end-diastole/end-systole stills (Leclerc et al. 2019).

Reads both releases with SimpleITK: the NIfTI one (`patientNNNN_2CH_ED.nii.gz`) and the legacy
challenge one (`patientNNNN_2CH_ED.mhd` + `.raw`). Segmentations (`_gt`) and sequences are not
images of their own and are skipped. Patient ids restart at 0001 in the legacy `testing/`
folder, so those become `camus-testing-patientNNNN`. `Info_2CH.cfg` keys (ImageQuality, ED/ES
frame numbers) are kept as metadata.
"""

from __future__ import annotations

import re
from pathlib import Path

from echosynth.gen.data.importers.base import UNKNOWN_LABEL, Item, excluded_row, relkey

NAME_RE = re.compile(r"^(patient\d+)_([^_]+)_(ED|ES)\.(nii\.gz|nii|mhd|mha)$", re.IGNORECASE)
VIEW_MAP = {"2CH": "A2C", "4CH": "A4C"}


def read_info(path: Path) -> dict[str, str]:
    """`Key: value` lines of a CAMUS Info_*.cfg file (empty dict if absent or unreadable)."""
    info = {}
    try:
        for line in path.read_text(errors="replace").splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                info[k.strip()] = v.strip()
    except OSError:
        pass
    return info


def scan(cfg, source: str) -> tuple[list[Item], list[dict]]:
    """One item per ED/ES still of a 2CH or 4CH view."""
    root = Path(cfg.src)
    items, excluded = [], []
    for p in sorted(root.rglob("*")):
        m = NAME_RE.match(p.name)
        if not m or not p.is_file():
            continue
        patient, chamber, phase = m.group(1).lower(), m.group(2).upper(), m.group(3).upper()
        parts = {q.lower() for q in p.relative_to(root).parts[:-1]}
        pid = f"{source}-testing-{patient}" if "testing" in parts else f"{source}-{patient}"
        view = VIEW_MAP.get(chamber)
        key = relkey(p, root)
        if view is None:
            excluded.append(excluded_row(key, UNKNOWN_LABEL, f"view {chamber!r} is not 2CH or 4CH", "", pid))
            continue
        info = read_info(p.parent / f"Info_{chamber}.cfg")
        meta = {"phase": phase, "image_quality": info.get("ImageQuality", "")}
        if info.get(phase, "").isdigit():
            meta["sequence_frame"] = int(info[phase]) - 1  # the cfg counts from 1
        items.append(Item(key=key, path=str(p), view=view, patient_id=pid, meta=meta))
    if not items and not excluded:
        raise FileNotFoundError(f"{root}: no CAMUS images found (patientNNNN_2CH_ED.nii.gz or .mhd files)")
    return items, excluded
