"""Benchmark: `gen/prepare.py import folder` on short DICOM cine loops (files/s, MB/s), and resume.

  python benchmarks/dicom_import.py [--n 1000] [--frames 16] [--height 240] [--width 320]
      [--workers 2] [--kill_at 0.5] [--work DIR] [--out benchmarks/results/dicom_import.json]

Writes N Ultrasound Multi-frame loops as a scanner would (a quarter each: MONOCHROME2 and RGB
uncompressed, RLE Lossless RGB, JPEG Baseline YBR_FULL_422; one phantom echo per loop inside a
Sequence of Ultrasound Regions, an ECG strip and text bar outside it), then
  1. imports them all into a fresh folder through the real command (wall time, files/s, MB/s);
  2. imports them again into another folder, SIGKILLs it once `--kill_at` of the files are done,
     re-runs the same command, and checks that the resumed import decoded only the rest and
     wrote the same manifest (same PNG SHA-1s) as the uninterrupted one.
Saves the numbers with the machine, load and date as JSON.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import datetime as dt
import io
import json
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from echosynth.gen.core.io import write_json
from echosynth.gen.core.rundir import cpu_name, load_average
from echosynth.gen.data import phantom
from echosynth.gen.data import phantom_overlay as ovl

REPO = Path(__file__).resolve().parent.parent
KINDS = ("mono", "rgb", "rle", "jpeg")
TEMPLATES = 8  # distinct loops per kind; the N files are copies with their own PatientID


def screen_loop(index: int, n_frames: int, h: int, w: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """(T,h,w,3) screens: a phantom echo loop in the top (h-40) rows, ECG strip and text below."""
    item = phantom.plan(index + 1, seed=1)[index]
    side = min(h - 40, w)
    clip = phantom.render_clip(item, 1, n_frames, doppler=False, raw=False, size=side)
    x0 = (w - side) // 2
    out = np.zeros((n_frames, h, w, 3), np.uint8)
    out[:, :side, x0:x0 + side] = clip
    for t in range(n_frames):
        ovl.draw_ecg(out[t], (side + 4, 8, 24, w - 16), t / n_frames, 2.0, (60, 220, 90))
        ovl.draw_text(out[t], f"LOOP {index:04d}  50HZ", h - 9, 4, (255, 255, 255))
    return out, (x0, 0, x0 + side - 1, side - 1)


def write_loop(path: Path, frames: np.ndarray, box: tuple[int, int, int, int], kind: str) -> None:
    """One DICOM loop in the transfer syntax of `kind`."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "US", "TEMPLATE"
    ds.Manufacturer, ds.ManufacturerModelName, ds.TransducerData = "EchoCorp", "Bench 1", "M5S"
    ds.FrameTime, ds.CineRate, ds.NumberOfFrames = 20.0, 50, len(frames)
    ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
    ds.Rows, ds.Columns = frames.shape[1:3]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    r = Dataset()
    r.RegionSpatialFormat, r.RegionDataType, r.RegionFlags = 1, 1, 0
    r.RegionLocationMinX0, r.RegionLocationMinY0, r.RegionLocationMaxX1, r.RegionLocationMaxY1 = box
    r.PhysicalUnitsXDirection = r.PhysicalUnitsYDirection = 3
    r.PhysicalDeltaX = r.PhysicalDeltaY = 0.05
    ds.SequenceOfUltrasoundRegions = [r]
    if kind == "mono":
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = np.ascontiguousarray(frames[..., 1]).tobytes()
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        if kind == "rgb":
            ds.PixelData = np.ascontiguousarray(frames).tobytes()
        elif kind == "rle":
            ds.compress(RLELossless, np.ascontiguousarray(frames), generate_instance_uid=False)
        else:
            parts = []
            for f in frames:
                buf = io.BytesIO()
                Image.fromarray(f).save(buf, format="JPEG", quality=90, subsampling=1)
                parts.append(buf.getvalue())
            ds.PixelData = encapsulate(parts)
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
            ds.PhotometricInterpretation = "YBR_FULL_422"
            ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)


def write_dataset(src: Path, n: int, n_frames: int, h: int, w: int) -> int:
    """N loops under src/A4C (templates copied with a new PatientID); returns the bytes written."""
    tmpl = src.parent / "templates"
    tmpl.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, kind in enumerate(KINDS):
        for j in range(TEMPLATES):
            frames, box = screen_loop(k * TEMPLATES + j, n_frames, h, w)
            p = tmpl / f"{kind}_{j}.dcm"
            write_loop(p, frames, box, kind)
            paths.append(p)
    (src / "A4C").mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(n):
        ds = pydicom.dcmread(str(paths[i % len(paths)]))  # the pixel data stays encoded as it is
        ds.PatientID = f"B{i:05d}"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out = src / "A4C" / f"loop{i:05d}.dcm"
        pydicom.dcmwrite(str(out), ds, enforce_file_format=True)
        total += out.stat().st_size
    shutil.rmtree(tmpl)
    return total


def _cmd(src: Path, out: Path, workers: int, size: int) -> list[str]:
    return [sys.executable, str(REPO / "gen" / "prepare.py"), "import", "folder", "--src", str(src),
            "--out", str(out), "--workers", str(workers), "--size", str(size)]


def _manifest_sha1s(out: Path) -> list[tuple[str, str]]:
    import pandas as pd

    df = pd.read_csv(out / "manifest.csv", dtype=str)
    return sorted(zip(df["path"], df["sha1"]))


def main(argv: list[str] | None = None) -> dict:
    """Write the loops, time a clean import, kill and resume a second one; print and save."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="DICOM loops to import")
    ap.add_argument("--frames", type=int, default=16, help="frames per loop")
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--size", type=int, default=112, help="output side (--size of the import)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--kill_at", type=float, default=0.5, help="fraction of files done when the second run is killed "
                                                               "(0 skips the resume check)")
    ap.add_argument("--work", default="", help="scratch folder (default: a temporary one, removed afterwards)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "dicom_import.json"))
    args = ap.parse_args(argv)

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="dicom-bench-"))
    src = work / "dicom"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    try:
        if src.exists():
            shutil.rmtree(src)
        t0 = time.perf_counter()
        n_bytes = write_dataset(src, args.n, args.frames, args.height, args.width)
        write_s = time.perf_counter() - t0

        load_before = load_average()
        clean = work / "clean"
        shutil.rmtree(clean, ignore_errors=True)
        t0, c0 = time.perf_counter(), os.times()
        subprocess.run(_cmd(src, clean, args.workers, args.size), check=True, env=env, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        c1 = os.times()
        cpu_s = (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
        summary = json.loads((clean / "summary.json").read_text())

        resume = None
        if args.kill_at > 0:
            resumed = work / "resumed"
            shutil.rmtree(resumed, ignore_errors=True)
            proc = subprocess.Popen(_cmd(src, resumed, args.workers, args.size), env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            target = max(1, int(args.kill_at * args.n))
            while proc.poll() is None and len(list((resumed / ".cache").glob("*.json"))) < target:
                time.sleep(0.05)
            killed = proc.poll() is None
            if killed:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            done_at_kill = len(list((resumed / ".cache").glob("*.json")))
            t0 = time.perf_counter()
            subprocess.run(_cmd(src, resumed, args.workers, args.size), check=True, env=env, stdout=subprocess.DEVNULL)
            resume_wall = time.perf_counter() - t0
            s2 = json.loads((resumed / "summary.json").read_text())
            same = _manifest_sha1s(resumed) == _manifest_sha1s(clean)
            resume = {"killed": killed, "files_done_at_kill": done_at_kill, "decoded_on_resume": s2["n_decoded_now"],
                      "resume_wall_s": round(resume_wall, 2), "manifest_identical_to_clean_run": same}
            if not same:
                raise SystemExit("dicom_import: the resumed import's manifest differs from the clean one")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    mb = n_bytes / 1e6
    result = {
        "benchmark": "gen/prepare.py import folder on DICOM cine loops (Ultrasound Multi-frame)",
        "n_files": args.n, "frames_per_file": args.frames, "screen": f"{args.height}x{args.width}",
        "mix": "1/4 each MONOCHROME2 and RGB Explicit VR LE, RLE Lossless RGB, JPEG Baseline YBR_FULL_422",
        "input_mb": round(mb, 1), "output_size": args.size, "workers": args.workers,
        "images_kept": summary["n_images"],
        "wall_s": round(wall, 2), "files_per_s": round(args.n / wall, 2), "mb_per_s": round(mb / wall, 2),
        "decode_preprocess_s": summary["seconds"], "files_per_s_workers": summary["files_per_second"],
        "cpu_s": round(cpu_s, 1), "files_per_cpu_s": round(args.n / cpu_s, 2) if cpu_s else None,
        "write_dataset_s": round(write_s, 1),
        "resume": resume,
        "device": f"cpu: {cpu_name()} ({os.cpu_count()} logical cores)",
        "load_avg_1min_before": load_before, "load_avg_1min_after": load_average(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "numpy": np.__version__, "pydicom": pydicom.__version__, "python": platform.python_version(),
        "command": "python benchmarks/dicom_import.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    write_json(args.out, result)
    print(f"DICOM import: {args.n} loops ({mb:.0f} MB) in {wall:.1f} s on {args.workers} workers = "
          f"{args.n / wall:.1f} files/s, {mb / wall:.1f} MB/s ({args.n / cpu_s:.1f} files per CPU-second; "
          f"load {load_before})" + (f"; resume after SIGKILL at {resume['files_done_at_kill']} files decoded "
                                    f"{resume['decoded_on_resume']} more, same manifest" if resume else "")
          + f" -> {args.out}")
    return result


if __name__ == "__main__":
    main()
