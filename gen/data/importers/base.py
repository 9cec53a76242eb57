"""The import engine shared by every format: items in, preprocessed PNGs and a manifest out.

A format module only *scans* its dataset: it reads the label files and returns one `Item` per
source file (path, view, patient, metadata) plus the files it had to exclude (unknown label,
missing file). This module decodes each item in parallel worker processes, applies the
preprocessing of `echosynth.gen.data.preprocess`, writes 8-bit PNGs, and caches one small JSON result per
item under `OUT/.cache/` so an interrupted or repeated import skips finished files. It then
groups colour inputs by KS tests, applies `--exclude-groups`, and writes `manifest.csv`,
`excluded.csv`, `groups/` and `summary.json`.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from echosynth.gen.core.io import (
    atomic_path,
    png_bytes,
    read_json,
    sha1_bytes,
    sha1_file,
    write_bytes,
    write_json,
    write_text,
)
from echosynth.gen.data import preprocess as pp
from echosynth.gen.data.build import claim_output, print_summary, summary_dict
from echosynth.gen.data.importers.readers import (
    NoPixelDataError,
    UnreadableError,
    crop_region,
    decode,
    kind_of,
    read_frames,
)
from echosynth.gen.data.manifest import REQUIRED_COLUMNS, read_manifest, write_manifest

# Reasons written to excluded.csv.
UNREADABLE = "unreadable"
NO_PIXELS = "no-pixel-data"  # a DICOM object that holds no image (structured report, ...)
COLOUR = "colour"  # direct Doppler detector: colour-flow blobs cover too much of the image
COLOUR_GROUP = "colour-group"  # in a KS colour group the user excluded with --exclude-groups
TOO_SHORT = "too-short"
UNKNOWN_LABEL = "unknown-label"
MISSING = "missing-file"
DUPLICATE = "duplicate"
PER_PATIENT_LIMIT = "per-patient-limit"
REASONS = (UNREADABLE, NO_PIXELS, COLOUR, COLOUR_GROUP, TOO_SHORT, UNKNOWN_LABEL, MISSING, DUPLICATE, PER_PATIENT_LIMIT)
EXCLUDED_COLUMNS = ("file", "reason", "detail", "view", "patient_id")
OVERVIEW_TILES = 64  # group examples on groups/overview.png
# --frames dissimilar keeps the frames under an MSE-similarity quantile of their clip: with
# fewer frames than this the quantile is one or two frames, so shorter clips are too short.
DISSIMILAR_MIN_FRAMES = 10


def min_frames_for(frames: str, min_frames: int) -> int:
    """The fewest frames a clip needs: --min_frames if set, else 1 (random, all) or 10 (dissimilar)."""
    if min_frames:
        return min_frames
    return DISSIMILAR_MIN_FRAMES if frames == "dissimilar" else 1


@dataclass
class Item:
    """One source file to import (a still, a video, or a volume)."""

    key: str  # unique and stable: the file's path relative to --src (plus a suffix if needed)
    path: str  # absolute path of the file to decode
    view: str
    patient_id: str
    video_id: str = ""  # for stills cut from a video (Unity); videos default to source-stem
    frame: int | None = None  # frame number of a still within its video, for the manifest
    quality: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # kept as meta_<name> columns


@dataclass
class Importer:
    """A registry entry: how to scan one dataset format and how to preprocess it."""

    name: str
    source: str  # default `source` column ('' = the --src folder name)
    scan: Callable[[Any, str], tuple[list[Item], list[dict]]]  # (cfg, source) -> items, excluded
    cone: bool  # crop to the detected sector by default (off for already-cropped datasets)
    doc: str = ""


def excluded_row(file: str, reason: str, detail: str = "", view: str = "", patient_id: str = "") -> dict:
    """One row of excluded.csv."""
    return {"file": file, "reason": reason, "detail": detail, "view": view, "patient_id": patient_id}


def relkey(path: Path, root: Path) -> str:
    """A file's path relative to the dataset root, with forward slashes: the item key."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:  # a label file pointing outside the root: keep the full path as the key
        return Path(path).resolve().as_posix()


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(key: str) -> str:
    """A file-system-safe PNG stem from an item key (path separators become '__')."""
    stem = key[:-7] if key.lower().endswith(".nii.gz") else os.path.splitext(key)[0]
    return _SAFE.sub("_", stem.replace("/", "__")).strip("_") or "item"


# ----------------------------------------------------------------------------------------------
# One item (runs in a worker process)


def process_item(item: Item, opts: dict) -> dict:
    """Decode, validate, preprocess and write one item; return its JSON-able result.

    The result holds `rows` (manifest rows), or `excluded` (reason, detail), and `hist` (the
    256-bin channel-difference histogram of the first frame, for colour inputs only).
    """
    result: dict[str, Any] = {"key": item.key, "item": item_signature(item), "rows": [], "excluded": None,
                              "hist": None, "n_frames": 0}
    try:
        decoded = decode(item.path)
    except NoPixelDataError as e:
        result["excluded"] = {"reason": NO_PIXELS, "detail": str(e)}
        return result
    except UnreadableError as e:
        result["excluded"] = {"reason": UNREADABLE, "detail": str(e)}
        return result
    frames, spacing = decoded.frames, decoded.spacing
    n = len(frames)
    result["n_frames"] = n
    is_video = kind_of(item.path) == "video" or n > 1
    need = min_frames_for(opts["frames"], opts["min_frames"])
    if is_video and n < need:
        why = (f"--min_frames {need}" if opts["min_frames"] else
               f"{need}, the fewest --frames {opts['frames']} compares (set --min_frames to change)")
        result["excluded"] = {"reason": TOO_SHORT, "detail": f"{n} frame(s) < {why}"}
        return result
    cropped = crop_region(frames, decoded.region)  # DICOM: the 2D tissue region only
    colour = cropped.ndim == 4  # readers return (T,H,W) when all channels are equal
    if colour:  # the KS grouping's sample (thesis §3.7.1), kept for excluded files too
        result["hist"] = pp.colour_histogram(cropped[0]).tolist()
    if frames.ndim == 4:
        # The flow decision looks at the whole screen: the colour half of a split screen lies
        # outside a DICOM's B-mode region.
        evidence = pp.flow_evidence(frames)
        result["flow_fraction"] = evidence.fraction
        if opts["doppler_threshold"] > 0 and evidence.fraction > opts["doppler_threshold"]:
            result["excluded"] = {"reason": COLOUR, "detail": f"{evidence.describe()} > --doppler_threshold "
                                                              f"{opts['doppler_threshold']}"}
            return result
    frames = cropped
    gray = frames if frames.ndim == 3 else np.stack([pp.to_gray(f) for f in frames])
    if spacing is not None:
        gray = np.stack([pp.resample_isotropic(f, spacing) for f in gray])
        if colour:
            frames = np.stack([pp.as_rgb(np.stack([pp.resample_isotropic(f[..., c], spacing) for c in range(3)], -1))
                               for f in frames])
    mask = pp.detect_cone(gray) if (opts["cone"] or colour) else None
    if colour:  # the plain colour-pixel share in the cone, for the group report
        result["colour_fraction"] = pp.clip_colour_fraction(frames, mask)
    crop_mask = mask if opts["cone"] else None
    size = opts["size"]
    if is_video:
        if opts["frames"] == "random":
            picks = pp.select_frames(n, "random", opts["seed"], item.key)
            processed = {i: pp.finish(gray[i], size, crop_mask) for i in picks}
        else:
            allp = np.stack([pp.finish(g, size, crop_mask) for g in gray])
            picks = pp.select_frames(n, opts["frames"], opts["seed"], item.key, allp, opts["quantile"])
            processed = {i: allp[i] for i in picks}
    else:
        picks = [0]
        processed = {0: pp.finish(gray[0], size, crop_mask)}
    source, out = opts["source"], Path(opts["out"])
    stem = safe_name(item.key)
    video_id = item.video_id or (f"{source}-{stem}" if is_video else "")
    for i in picks:
        rel = f"images/{source}/{item.view}/{stem}" + (f"_f{i:04d}" if is_video else "") + ".png"
        data = png_bytes(processed[i])
        _write_fast(out / rel, data)
        result["rows"].append({
            "path": rel, "view": item.view, "source": source, "patient_id": item.patient_id, "split": "",
            "frame": i if is_video else item.frame, "quality": item.quality, "sha1": sha1_bytes(data),
            "video_id": video_id, **{f"meta_{k}": v for k, v in {**decoded.meta, **item.meta}.items()},
        })
    return result


def item_signature(item: Item) -> str:
    """SHA-1 of everything an item carries: a changed label or file size invalidates its cache."""
    try:
        st = os.stat(item.path)
        stamp = [st.st_size, st.st_mtime_ns]
    except OSError:
        stamp = None
    return sha1_bytes(json.dumps([asdict(item), stamp], sort_keys=True, default=str).encode("utf-8"))


def _cache_path(out: Path, key: str) -> Path:
    return out / ".cache" / (sha1_bytes(key.encode("utf-8")) + ".json")


def _work(args: tuple[Item, dict]) -> dict:
    """Worker entry: process one item, never raise (a surprise becomes an 'unreadable' exclusion)."""
    item, opts = args
    try:
        result = process_item(item, opts)
    except Exception as e:  # a decoder bug on one file must not end a 20,000-file import
        detail = f"{item.path}: {type(e).__name__}: {e}"
        if opts.get("debug"):
            detail += "\n" + traceback.format_exc()
        result = {"key": item.key, "item": item_signature(item), "rows": [],
                  "excluded": {"reason": UNREADABLE, "detail": detail}, "hist": None, "n_frames": 0}
    _write_fast(_cache_path(Path(opts["out"]), item.key), json.dumps(result).encode("utf-8"))
    return result


def _write_fast(path: Path, data: bytes) -> None:
    """Atomic (temp file + rename) but not fsync'd: per-file fsyncs cost ~5 ms each on a
    network disk, as long as decoding a small clip. A resume checks each PNG's SHA-1, so a
    file lost to a power cut is redone rather than trusted."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# ----------------------------------------------------------------------------------------------
# Output directory and resume


def _claim_output(out: Path, src: Path, settings: dict, overwrite: bool) -> None:
    """Create OUT, refusing one inside SRC or holding it; resume, refuse or wipe it as build.claim_output does."""
    out_r, src_r = out.resolve(), src.resolve()
    if out_r == src_r or src_r in out_r.parents or out_r in src_r.parents:
        raise ValueError(f"--out {out} and --src {src} must not contain each other")
    claim_output(out, ".import.json", settings, overwrite, "an import")  # only --exclude-groups and --workers may change


def _workers(n: int) -> int:
    return n or min(os.cpu_count() or 1, 8)


def _process_all(items: list[Item], opts: dict, workers: int, progress: bool) -> list[dict]:
    out = Path(opts["out"])
    results: dict[str, dict] = {}
    todo = []
    for it in items:
        cached = _cache_path(out, it.key)
        if cached.is_file():
            try:
                res = read_json(cached)
                if res.get("item") == item_signature(it) and all(
                        (out / r["path"]).is_file() and sha1_file(out / r["path"]) == r["sha1"] for r in res["rows"]):
                    results[it.key] = res
                    continue
            except (ValueError, KeyError):
                pass  # a damaged cache entry: redo the item
        todo.append(it)
    bar = tqdm(total=len(items), initial=len(results), desc=f"import {opts['source']}", unit="file",
               disable=not progress)
    jobs = [(it, opts) for it in todo]
    if workers == 1 or len(todo) <= 1:
        stream = map(_work, jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        stream = pool.map(_work, jobs, chunksize=max(1, min(16, len(jobs) // (workers * 8))))
    try:
        for res in stream:
            results[res["key"]] = {**res, "fresh": True}
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()
    return [results[it.key] for it in items]


# ----------------------------------------------------------------------------------------------
# Colour groups


def _group_report(items: list[Item], results: list[dict], out: Path, alpha: float) -> pd.DataFrame:
    """KS-group colour inputs (in key order); write groups/groups.csv and one example PNG each."""
    colour = sorted((r["key"], r, it) for it, r in zip(items, results) if r.get("hist") is not None)
    gdir = out / "groups"
    if not colour:
        return pd.DataFrame(columns=["key", "group"])
    hists = [np.asarray(r["hist"]) for _, r, _ in colour]
    groups, refs = pp.ks_groups(hists, alpha=alpha)
    members = pd.DataFrame({"key": [k for k, _, _ in colour], "group": groups,
                            "colour_fraction": [r.get("colour_fraction") for _, r, _ in colour],
                            "flow_fraction": [r.get("flow_fraction") for _, r, _ in colour]})
    from PIL import Image, ImageDraw

    rows, tiles = [], []
    for g, ref in enumerate(refs):
        key, _, item = colour[ref]
        example = f"group_{g:03d}.png"
        try:
            frames, _ = read_frames(item.path)
            first = pp.as_rgb(frames[0])
            h, w = first.shape[:2]
            scale = min(1.0, 256 / max(h, w))
            im = Image.fromarray(first).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
            write_bytes(gdir / example, png_bytes(np.asarray(im)))
            if len(tiles) < OVERVIEW_TILES:
                tile = Image.new("RGB", (160, 136))
                tile.paste(im.resize((160, 120), Image.BICUBIC), (0, 16))
                ImageDraw.Draw(tile).text((2, 2), f"group {g}", fill=(255, 255, 0))
                tiles.append(tile)
        except UnreadableError:
            example = ""
        sel = members["group"] == g
        rows.append({"group": g, "n_files": int(sel.sum()), "reference": key, "example": example,
                     "mean_colour_fraction": round(float(members.loc[sel, "colour_fraction"].mean()), 4),
                     "mean_flow_fraction": round(float(members.loc[sel, "flow_fraction"].mean()), 4)})
    write_csv(pd.DataFrame(rows), gdir / "groups.csv")
    if tiles:  # one sheet to look at: the first OVERVIEW_TILES groups' examples, labelled
        cols = min(8, len(tiles))
        sheet = Image.new("RGB", (160 * cols, 136 * ((len(tiles) + cols - 1) // cols)))
        for k, tile in enumerate(tiles):
            sheet.paste(tile, (160 * (k % cols), 136 * (k // cols)))
        write_bytes(gdir / "overview.png", png_bytes(np.asarray(sheet)))
    return members


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Atomically write a plain CSV table (excluded.csv, the group report)."""
    write_text(path, df.to_csv(index=False))


# ----------------------------------------------------------------------------------------------
# The whole import


def settings_of(cfg: Any, importer: Importer, source: str, cone: bool) -> dict:
    """The settings that decide the output; a resumed import must have the same ones."""
    return {
        "format": importer.name, "src": str(Path(cfg.src).resolve()), "source": source, "size": cfg.size,
        "seed": cfg.seed, "frames": cfg.frames, "dissimilar_quantile": cfg.dissimilar_quantile,
        "doppler_threshold": cfg.doppler_threshold, "max_per_patient_view": cfg.max_per_patient_view,
        "labels": str(Path(cfg.labels).resolve()) if cfg.labels else "", "cone": cone,
        "min_frames": min_frames_for(cfg.frames, cfg.min_frames), "ks_alpha": cfg.ks_alpha,
    }


def import_dataset(importer: Importer, cfg: Any, progress: bool | None = None) -> dict:
    """Run one import end to end (see the module docstring); return the summary dict."""
    src, out = Path(cfg.src), Path(cfg.out)
    if not src.is_dir():
        raise FileNotFoundError(f"--src {src}: dataset folder not found")
    source = cfg.source or importer.source or _SAFE.sub("-", src.resolve().name.lower()).strip("-") or "folder"
    cone = importer.cone if cfg.cone == "auto" else cfg.cone == "on"
    settings = settings_of(cfg, importer, source, cone)
    progress = sys.stderr.isatty() if progress is None else progress  # gen/prepare.py passes its own decision
    _claim_output(out, src, settings, cfg.overwrite)

    items, excluded = importer.scan(cfg, source)
    seen: dict[str, Item] = {}
    for it in items:
        if it.key in seen:
            excluded.append(excluded_row(it.key, DUPLICATE, "listed more than once", it.view, it.patient_id))
        else:
            seen[it.key] = it
    items = sorted(seen.values(), key=lambda it: it.key)
    opts = {"out": str(out), "source": source, "size": cfg.size, "seed": cfg.seed, "frames": cfg.frames,
            "quantile": cfg.dissimilar_quantile, "doppler_threshold": cfg.doppler_threshold,
            "cone": cone, "min_frames": cfg.min_frames}
    n_listed = len(items) + len(excluded)
    t0 = time.perf_counter()
    results = _process_all(items, opts, _workers(cfg.workers), progress)
    seconds = time.perf_counter() - t0

    members = _group_report(items, results, out, cfg.ks_alpha)
    n_groups = int(members["group"].max()) + 1 if len(members) else 0
    bad = [g for g in cfg.exclude_groups if not 0 <= g < n_groups]
    if bad:
        raise ValueError(f"--exclude-groups {bad}: no such colour group; this import has groups 0..{n_groups - 1} "
                         f"(see {out / 'groups' / 'groups.csv'})" if n_groups else
                         f"--exclude-groups {bad}: this import found no colour inputs, so there are no groups")
    dropped = set(members.loc[members["group"].isin(cfg.exclude_groups), "key"])
    group_of = dict(zip(members["key"], members["group"]))

    rows = []
    for it, res in zip(items, results):
        if res["excluded"]:
            excluded.append(excluded_row(it.key, res["excluded"]["reason"], res["excluded"]["detail"],
                                         it.view, it.patient_id))
        elif it.key in dropped:
            excluded.append(excluded_row(it.key, COLOUR_GROUP, f"KS colour group {group_of[it.key]} excluded by "
                                         "--exclude-groups", it.view, it.patient_id))
        else:
            rows.extend(res["rows"])
    if len(members):
        status = {e["file"]: "excluded:" + e["reason"] for e in excluded}
        members["status"] = [status.get(k, "ok") for k in members["key"]]
        write_csv(members, out / "groups" / "members.csv")
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=list(REQUIRED_COLUMNS) + ["video_id"])
    df["frame"] = df["frame"].astype("Int64") if len(df) else df["frame"]
    df = df.sort_values("path", kind="stable").reset_index(drop=True)
    exc = pd.DataFrame(excluded, columns=list(EXCLUDED_COLUMNS)).sort_values(["reason", "file"], kind="stable")
    write_manifest(df, out / "manifest.csv")
    write_csv(exc, out / "excluded.csv")
    n_new = sum(1 for r in results if r.get("fresh"))
    summary = {"settings": settings, "n_files": n_listed, "n_decoded_now": n_new,
               "seconds": round(seconds, 2), "files_per_second": round(n_new / seconds, 2) if n_new and seconds else None,
               "excluded_by_reason": {k: int(v) for k, v in Counter(exc["reason"]).items()},
               "colour_groups": n_groups, "excluded_groups": sorted(cfg.exclude_groups)}
    if len(df):
        summary.update(summary_dict(df))
    else:
        summary.update({"n_images": 0, "n_patients": 0})
    write_json(out / "summary.json", summary)
    if len(df):
        read_manifest(out / "manifest.csv", check_files=True)  # the contract with every later stage
    return summary


def print_report(summary: dict, out: Path) -> None:
    """Counts per view × source, exclusions by reason, colour groups, and where the files are."""
    m = Path(out) / "manifest.csv"
    df = pd.read_csv(m, dtype=str, keep_default_na=False)
    if len(df):
        print_summary(df, f"import into {out}")
    else:
        print(f"import into {out}: no images were kept")
    if summary["n_decoded_now"]:
        print(f"decoded {summary['n_decoded_now']} of {summary['n_files']} files in {summary['seconds']} s "
              f"({summary['files_per_second']} files/s); the rest were done already or excluded from their labels")
    exc = summary["excluded_by_reason"]
    if exc:
        print("excluded: " + ", ".join(f"{k} {v}" for k, v in sorted(exc.items())) + f"  (see {Path(out) / 'excluded.csv'})")
    if summary["colour_groups"]:
        print(f"colour groups (KS, alpha {summary['settings']['ks_alpha']}): {summary['colour_groups']}; "
              f"inspect {Path(out) / 'groups'} and re-run with --exclude-groups N,M to drop unusable ones"
              + (f"; excluded now: {summary['excluded_groups']}" if summary["excluded_groups"] else ""))

