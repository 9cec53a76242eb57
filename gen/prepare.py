"""Prepare datasets: render the phantom, import real datasets, split by patient with nested subsets.

  python gen/prepare.py phantom --out data/phantom --n 4000 --size 112
  python gen/prepare.py split --manifest data/phantom/manifest.csv --out data/phantom-split
  python gen/prepare.py import tmed2 --src /data/TMED2 --out data/tmed2 --workers 8
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from echosynth.gen.core.config import ConfigError, field, parse_config
from echosynth.gen.core.launcher import progress_wanted
from echosynth.gen.core.script import run_script, user_errors

COMMANDS = ("phantom", "split", "import")


@dataclass
class PrepareConfig:
    command: str = field("phantom", help="what to do", choices=COMMANDS)
    format: str = field("", help="import: dataset format (tmed2, echonet-dynamic, echonet-lvh, camus, unity, cactus, folder, videos)")
    out: str = field("", help="output directory")
    overwrite: bool = field(False, help="replace an existing output")
    seed: int = field(0, help="random seed (phantom rendering, splits, frame selection)")
    size: int = field(112, help="output image side in pixels", min=16, max=1024)
    workers: int = field(0, help="worker processes (0 = one per core, at most 8)", min=0)
    # phantom
    n: int = field(4000, help="phantom: number of frames", min=1)
    # split
    manifest: str = field("", help="split: input manifest.csv")
    subsets: list[int] = field(default_factory=lambda: [1000, 2000, 4000, 8000, 16000],
                               help="split: nested training subset sizes (comma-separated)")
    fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1], help="split: train,val,test fractions")
    holdout_sources: list[str] = field(default_factory=lambda: ["camus", "unity"],
                                       help="split: sources held out whole as the domain-shift set")
    allow_outside_paths: bool = field(False, help="split: accept manifest rows pointing outside the manifest's "
                                                  "folder (absolute or ../ paths), for data that really lives elsewhere")
    # import
    src: str = field("", help="import: dataset root directory")
    max_per_patient_view: int = field(15, help="import tmed2: at most this many images per patient and view", min=1)
    frames: str = field("random", help="import videos: frame selection", choices=("random", "dissimilar", "all"))
    dissimilar_quantile: float = field(0.25, help="import videos: MSE quantile for --frames dissimilar", min=0.0, max=1.0)
    doppler_threshold: float = field(0.002, help="import: max share of the imaging region covered by colour-flow blobs "
                                            "(0 disables; see docs/importers.md)", min=0.0, max=1.0)
    exclude_groups: list[int] = field(default_factory=list, help="import: KS colour groups to drop (see OUT/groups/)")
    labels: str = field("", help="import: label/grades CSV path if not at the format's default place")
    source: str = field("", help="import: `source` column and patient-id prefix (default: the format's name; "
                              "folder/videos: the --src folder name)")
    cone: str = field("auto", help="import: crop to the detected sector (auto = the format's default)",
                      choices=("auto", "on", "off"))
    min_frames: int = field(0, help="import videos: clips with fewer frames are excluded as too short (0 = what "
                                    "--frames needs: 1 for random and all, 10 for dissimilar)", min=0)
    ks_alpha: float = field(0.05, help="import: significance level of the KS colour grouping", min=0.0, max=1.0)

    def validate(self) -> None:
        if not self.out:
            raise ConfigError("--out is required")
        if self.command == "split" and not self.manifest:
            raise ConfigError("split needs --manifest PATH")
        if self.command == "split" and any(s < 1 for s in self.subsets):
            raise ConfigError(f"subsets: {','.join(map(str, self.subsets))} — each nested subset size must be a "
                              "whole number of training images >= 1, e.g. --subsets 1000,2000,4000")
        if self.command == "import" and not (self.format and self.src):
            raise ConfigError("import needs a FORMAT and --src PATH, e.g. `prepare.py import tmed2 --src /data/TMED2 --out DIR`")
        if self.command == "import":
            # here: only `import` pays for pandas and the readers
            from echosynth.gen.data.importers import FORMATS

            if self.format not in FORMATS:
                raise ConfigError(f"format: {self.format!r} is not one of {', '.join(FORMATS)}")


@user_errors("prepare.py", FileExistsError, FileNotFoundError, ValueError)
def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(PrepareConfig, argv, description=__doc__, positional=("command", "format"))
    # after parsing: --help and config errors answer without pandas and scipy
    from echosynth.gen.data.build import build_phantom, build_splits, print_summary
    from echosynth.gen.data.importers import run_import
    from echosynth.gen.data.manifest import read_manifest

    if cfg.command == "phantom":
        m = build_phantom(cfg.out, n=cfg.n, size=cfg.size, seed=cfg.seed, workers=cfg.workers,
                          overwrite=cfg.overwrite, progress=progress_wanted())
        print_summary(m.df, f"phantom dataset in {cfg.out}")
    elif cfg.command == "split":
        info = build_splits(cfg.manifest, cfg.out, cfg.subsets, seed=cfg.seed, fractions=cfg.fractions,
                            holdout_sources=cfg.holdout_sources, overwrite=cfg.overwrite,
                            allow_outside=cfg.allow_outside_paths)
        print_summary(read_manifest(Path(cfg.out) / "manifest.csv", check_files=False).df, f"splits in {cfg.out}")
        print(f"nested training subsets: {info['subsets']}" +
              (f" (dropped, larger than the training split: {info['dropped_subsets']})" if info["dropped_subsets"] else ""))
    else:
        run_import(cfg, progress=progress_wanted())  # prints its own report (counts, exclusions, colour groups)
    return 0


if __name__ == "__main__":
    run_script(main)
