"""Dataset importers: `prepare.py import FORMAT --src PATH --out DIR` for every supported format.

`IMPORTERS` maps each format name to its `Importer` (how to scan the dataset, its default
`source` name, whether to crop to the cone by default); it also feeds the CLI's choices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from echosynth.gen.data.importers import cactus, camus, echonet, generic, tmed2, unity
from echosynth.gen.data.importers.base import Importer, Item, import_dataset, print_report

# cone: crop to the detected sector. Off where the release is already cropped to the image
# (TMED2 stills, CAMUS sectors without overlays); on where burnt-in overlays may remain.
IMPORTERS: dict[str, Importer] = {
    "tmed2": Importer("tmed2", "tmed2", tmed2.scan, cone=False, doc="TMED2 PNG stills + label CSV(s)"),
    "echonet-dynamic": Importer("echonet-dynamic", "dynamic", echonet.scan_dynamic, cone=True,
                                doc="EchoNet-Dynamic FileList.csv + Videos/*.avi (A4C)"),
    "echonet-lvh": Importer("echonet-lvh", "lvh", echonet.scan_lvh, cone=True,
                            doc="EchoNet-LVH MeasurementsList.csv + Batch*/*.avi (PLAX)"),
    "camus": Importer("camus", "camus", camus.scan, cone=False, doc="CAMUS 2CH/4CH ED/ES, NIfTI or MHD/RAW"),
    "unity": Importer("unity", "unity", unity.scan, cone=True, doc="Unity png-cache frames + view label CSV"),
    "cactus": Importer("cactus", "cactus", cactus.scan, cone=True, doc="CACTUS view folders + grades CSV"),
    "folder": Importer("folder", "", generic.scan_folder, cone=True, doc="ROOT/<view>/* images, clips, DICOM"),
    "videos": Importer("videos", "", generic.scan_videos, cone=True, doc="a folder of clips + labels CSV"),
}
FORMATS = tuple(IMPORTERS)

__all__ = ["FORMATS", "IMPORTERS", "Importer", "Item", "import_dataset", "run_import"]


def run_import(cfg: Any, progress: bool | None = None) -> dict:
    """Import `cfg.src` in format `cfg.format` into `cfg.out` and print the report."""
    if cfg.format not in IMPORTERS:
        raise ValueError(f"unknown import format {cfg.format!r}; choose one of {', '.join(FORMATS)}")
    summary = import_dataset(IMPORTERS[cfg.format], cfg, progress=progress)
    print_report(summary, Path(cfg.out))
    return summary
