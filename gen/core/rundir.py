"""Numbered, self-describing run directories and their provenance.

A run directory is `<root>/<NNNNN>-<kind>-<description>/`. `config.json` (the resolved config)
is written first and `provenance.json` right after, before any work starts, so every output
can be traced to the exact settings, code version, inputs and parent runs that made it.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from echosynth.gen.core.io import fingerprint, read_json, write_json

_RUN_RE = re.compile(r"^(\d{5})-")
TRACKED_PACKAGES = (
    "echosynth", "torch", "diffusers", "accelerate", "torchmetrics", "numpy", "scipy",
    "scikit-learn", "pandas", "pillow", "safetensors", "umap-learn", "streamlit",
)


def slug(text: str, max_len: int = 48) -> str:
    """File-name-safe lowercase description: letters, digits, '.', '_' and '-'."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip()).strip("-").lower()
    return s[:max_len].rstrip("-") or "run"


def next_run_dir(root: str | os.PathLike, kind: str, description: str = "") -> Path:
    """Create and return the next numbered run directory under `root` (race-safe via mkdir)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name_tail = slug(kind) + (f"-{slug(description)}" if description else "")
    while True:
        numbers = [int(m.group(1)) for p in root.iterdir() if (m := _RUN_RE.match(p.name))]
        run = root / f"{(max(numbers) + 1) if numbers else 0:05d}-{name_tail}"
        try:
            run.mkdir()
            return run
        except FileExistsError:  # another process took this number: try the next
            continue


def git_sha(cwd: str | os.PathLike | None = None) -> str | None:
    """The current git commit (with '-dirty' if the tree has changes), or None outside git."""
    cwd = cwd or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages that determine results."""
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = None
    return out


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows (for benchmark records)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    """The 1-minute load average, rounded (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def hardware() -> dict[str, Any]:
    """CPU count, platform and (if any) CUDA devices."""
    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                            "python": sys.version.split()[0]}
    try:
        import torch

        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # torch absent or CUDA query failing must not stop provenance
        info["cuda_devices"] = []
    return info


def provenance(
    *, seed: int | None = None, world_size: int = 1, inputs: dict[str, str | os.PathLike] | None = None,
    parents: list[str | os.PathLike] | None = None, argv: list[str] | None = None,
) -> dict[str, Any]:
    """Provenance record: code version, packages, machine, seed, inputs with fingerprints, parents."""
    fps = {}
    for name, p in (inputs or {}).items():
        p = Path(p)
        fps[name] = {"path": str(p.resolve()), "sha1": fingerprint(p) if p.exists() else None}
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "argv": list(sys.argv if argv is None else argv),
        "hostname": socket.gethostname(),
        "seed": seed,
        "world_size": world_size,
        "packages": package_versions(),
        "hardware": hardware(),
        "inputs": fps,
        "parents": [str(Path(p).resolve()) for p in (parents or [])],
    }


def start_run(
    root: str | os.PathLike, kind: str, description: str, config: dict, **provenance_kwargs: Any
) -> Path:
    """Create the next run directory and write config.json, then provenance.json, into it."""
    run = next_run_dir(root, kind, description)
    write_json(run / "config.json", config)
    write_json(run / "provenance.json", provenance(**provenance_kwargs))
    return run


def init_run_dir(run: str | os.PathLike, config: dict, *, overwrite: bool = False, **provenance_kwargs: Any) -> Path:
    """Use an explicit run directory: refuse a used one unless overwriting (a stage that resumes checks it with check_resumable)."""
    run = Path(run)
    cfg_path = run / "config.json"
    if cfg_path.exists():
        if not overwrite:
            # Scripts that can continue a run (gen/train.py, classify/train.py) say so before calling this.
            raise FileExistsError(f"{run} already holds a run; pass --overwrite to replace it or choose another output")
        import shutil

        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    write_json(cfg_path, config)
    write_json(run / "provenance.json", provenance(**provenance_kwargs))
    return run


def check_resumable(run: Path, new: dict, may_differ: set[str] | frozenset[str] = frozenset()) -> None:
    """Refuse to continue `run` when its saved config.json differs from `new` outside the top-level keys `may_differ`.

    The one resume check of every stage that can continue a run: each declares only what may differ
    (echosynth.gen.diffusion.settings.RESUME_MAY_DIFFER, echosynth.classify.train.RESUME_MAY_DIFFER).
    """
    old = read_json(run / "config.json")
    if not isinstance(old, dict):
        raise ValueError(f"{run / 'config.json'}: not a saved config (a JSON mapping of config keys); "
                         "replace the run with --overwrite")
    diffs = sorted(k for k in _diff_keys(old, new) if k.split(".")[0] not in may_differ)
    if diffs:
        detail = ", ".join(f"{k} (saved {_get(old, k)!r}, now {_get(new, k)!r})" for k in diffs)
        raise ValueError(f"{run}: cannot resume, the config differs from {run / 'config.json'} in: {detail}")


def _get(d: Any, dotted: str) -> Any:
    for k in dotted.split("."):
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _diff_keys(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for k in set(a) | set(b):
            out |= _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}
