"""DICOM as scanners write it, through `prepare.py import folder` and the `videos` importer.

Files are written by the tests with pydicom: Ultrasound Multi-frame Image Storage in Explicit
VR Little Endian (MONOCHROME2, RGB), RLE Lossless and JPEG Baseline (YBR_FULL_422), each with a
Sequence of Ultrasound Regions around the echo; an ECG strip and a text bar lie outside it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from echosynth.gen.data import preprocess as pp
from echosynth.gen.data.importers.readers import DICOM_META_TAGS, decode, read_dicom
from tests.conftest import PYTHON, REPO, run_cli
from tests.importer_fixtures import (
    IDENTIFYING,
    corrupt,
    echo_clip,
    scanner_screen,
    us_region,
    write_dicom,
    write_gif,
)
from tests.test_importers import SIZE, do_import, reasons

SYNTAXES = [("explicit", True), ("explicit", False), ("rle", True), ("rle", False), ("jpeg", True), ("jpeg", False)]


def loop(n: int = 4, seed: int = 0, colour: bool = True) -> tuple[np.ndarray, tuple]:
    screens = [scanner_screen(t, seed, colour=colour) for t in range(n)]
    return np.stack([s for s, _ in screens]), screens[0][1]


def expected_png(frames: np.ndarray, box: tuple, frame: int) -> np.ndarray:
    """The output the region crop implies (cone cropping off): independent of the importer."""
    x0, y0, x1, y1 = box
    f = frames[frame, y0:y1 + 1, x0:x1 + 1]
    return pp.finish(pp.to_gray(f), SIZE, None)


@pytest.mark.parametrize("syntax,colour", SYNTAXES)
def test_decode_each_transfer_syntax(tmp_path, syntax, colour):
    frames, box = loop(3, 1, colour)
    p = write_dicom(tmp_path / "x.dcm", frames, syntax=syntax, regions=[us_region(*box)])
    dec = decode(p)
    gray = frames if not colour else frames  # the screen has colour (ECG) only outside the echo
    assert dec.frames.shape == gray.shape
    err = np.abs(dec.frames.astype(int) - gray.astype(int))
    if syntax == "jpeg":  # lossy: close on average, YBR converted back to RGB (not left as YCbCr)
        assert err.mean() < 3
        if colour:
            ecg = (frames[..., 1].astype(int) - frames[..., 0]) > 100
            assert (dec.frames[..., 1][ecg].astype(int) - dec.frames[..., 0][ecg]).mean() > 80  # still green
    else:
        assert err.max() == 0
    assert (dec.region.left, dec.region.top, dec.region.right, dec.region.bottom) == (box[0], box[1], box[2] + 1, box[3] + 1)
    assert dec.spacing == (0.03, 0.03)
    assert dec.meta["manufacturer"] == "EchoCorp" and dec.meta["frame_time_ms"] == 20.0 and dec.meta["cine_rate"] == 50
    assert dec.meta["transducer"] == "M5S\\phased" and dec.meta["n_frames"] == 3
    cropped, spacing = read_dicom(p)
    assert cropped.shape[1:3] == (box[3] + 1 - box[1], box[2] + 1 - box[0]) and cropped.ndim == 3  # gray inside
    assert spacing == (0.03, 0.03)


def test_import_folder_every_syntax_crops_to_the_region_and_keeps_no_identifiers(tmp_path):
    root, out = tmp_path / "clinic", tmp_path / "out"
    truth = {}
    for k, (syntax, colour) in enumerate(SYNTAXES):
        frames, box = loop(4, k, colour)
        name = f"{syntax}_{'rgb' if colour else 'mono'}"
        write_dicom(root / "A4C" / f"{name}.dcm", frames, patient_id=f"PAT{k % 3}", syntax=syntax,
                    regions=[us_region(*box)])
        truth[name] = (frames, box, syntax)
    proc = run_cli([PYTHON, "gen/prepare.py", "import", "folder", "--src", str(root), "--out", str(out),
                    "--size", str(SIZE), "--workers", "2", "--cone", "off"])
    assert "import into" in proc.stdout
    df = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    assert len(df) == len(SYNTAXES) and set(df["view"]) == {"A4C"}
    assert set(df["patient_id"]) == {"clinic-PAT0", "clinic-PAT1", "clinic-PAT2"}
    for _, row in df.iterrows():
        name = Path(row["path"]).stem.split("__")[1].rsplit("_f", 1)[0]
        frames, box, syntax = truth[name]
        with Image.open(out / row["path"]) as im:
            got = np.asarray(im)
        want = expected_png(frames, box, int(row["frame"]))
        # The ECG strip and the text bar (rows below the region) never reach the output.
        if syntax == "jpeg":
            assert np.abs(got.astype(int) - want).mean() < 3
        else:
            assert np.array_equal(got, want)
        assert row["meta_manufacturer"] == "EchoCorp" and row["meta_model"] == "Vivid Test 9"
        assert float(row["meta_frame_time_ms"]) == 20.0 and int(row["meta_cine_rate"]) == 50
        assert row["meta_region"] == f"{box[0]},{box[1]},{box[2] + 1},{box[3] + 1}"
        assert float(row["meta_delta_x_cm"]) == 0.03
    assert set(df["meta_transfer_syntax"]) == {"Explicit VR Little Endian", "RLE Lossless", "JPEG Baseline (Process 1)"}
    # Nothing identifying is copied: no tag beyond the documented ones, none of their values.
    meta_cols = {c[5:] for c in df.columns if c.startswith("meta_")}
    assert meta_cols <= set(DICOM_META_TAGS.values()) | {"sop_class", "transfer_syntax", "region", "delta_x_cm", "delta_y_cm"}
    text = "".join((out / f).read_text() for f in ("manifest.csv", "excluded.csv", "summary.json"))
    for value in IDENTIFYING.values():
        assert value not in text and value.split("^")[0] not in text


def test_region_crop_keeps_the_ecg_strip_out(tmp_path):
    """With the region, the output is the region's echo; without it the bright strip comes through."""
    frames, box = loop(2, 3, colour=False)  # gray screen: the ECG strip is white, like the tissue
    root = tmp_path / "src"
    write_dicom(root / "A4C" / "with.dcm", frames, regions=[us_region(*box)])
    write_dicom(root / "A4C" / "without.dcm", frames)
    m, exc, _ = do_import("folder", root, tmp_path / "out", cone="off")
    got = {Path(p).stem.split("__")[1].rsplit("_f", 1)[0]: (m.abspath(i), int(f))
           for i, (p, f) in enumerate(zip(m.df["path"], m.df["frame"]))}
    with Image.open(got["with"][0]) as im:
        assert np.array_equal(np.asarray(im), expected_png(frames, box, got["with"][1]))
    with Image.open(got["without"][0]) as im:
        whole = pp.finish(frames[got["without"][1]], SIZE, None)
        assert np.array_equal(np.asarray(im), whole)
        assert not np.array_equal(np.asarray(im), expected_png(frames, box, got["without"][1]))
    # The ECG strip is the brightest thing on the screen; the region's output has none of it.
    x0, y0, x1, y1 = box
    assert frames[:, y1 + 1:].max() == 255 and frames[:, y0:y1 + 1, x0:x1 + 1].max() < 240
    # With --cone on (the folder default) the region is cropped first, then the sector.
    m2, _, _ = do_import("folder", root, tmp_path / "out2")
    assert len(m2) == 2


def test_broken_dicoms_are_excluded_with_a_reason_and_the_rest_imported(tmp_path):
    root = tmp_path / "src"
    frames, box = loop(3, 4)
    write_dicom(root / "A4C" / "good.dcm", frames, regions=[us_region(*box)], syntax="rle")
    write_dicom(root / "A4C" / "good2.dcm", frames[..., 0], regions=[us_region(*box)])
    corrupt(root / "A4C" / "garbage.dcm")
    trunc = write_dicom(root / "A4C" / "truncated.dcm", frames, regions=[us_region(*box)])
    trunc.write_bytes(trunc.read_bytes()[:-frames[0].size])  # the last frame's pixels are cut off
    write_dicom(root / "A4C" / "nopixels.dcm", frames, pixels=False)
    write_dicom(root / "A4C" / "report.dcm", frames, sop="sr")
    m, exc, summary = do_import("folder", root, tmp_path / "out")
    assert sorted(Path(p).stem.split("__")[1].rsplit("_f", 1)[0] for p in m.df["path"]) == ["good", "good2"]
    r = reasons(exc)
    assert r == {"A4C/garbage.dcm": "unreadable", "A4C/truncated.dcm": "unreadable",
                 "A4C/nopixels.dcm": "no-pixel-data", "A4C/report.dcm": "no-pixel-data"}
    detail = dict(zip(exc["file"], exc["detail"]))
    assert "not a readable DICOM file" in detail["A4C/garbage.dcm"]
    assert "pixel data cannot be decoded" in detail["A4C/truncated.dcm"]
    assert "Ultrasound Multi-frame Image Storage" in detail["A4C/nopixels.dcm"]
    assert "Comprehensive SR Storage is a structured report" in detail["A4C/report.dcm"]
    assert summary["excluded_by_reason"] == {"unreadable": 2, "no-pixel-data": 2}


def test_colour_doppler_dicom_and_split_screen_are_excluded(tmp_path):
    root = tmp_path / "src"
    frames, box = loop(4, 5)
    write_dicom(root / "A4C" / "bmode.dcm", frames, regions=[us_region(*box)], syntax="jpeg")
    flow = echo_clip(4, 5, doppler=True)  # a red/blue jet inside the sector
    screen = frames.copy()
    screen[:, :64, 8:88] = flow
    write_dicom(root / "A4C" / "doppler.dcm", screen, regions=[us_region(*box), us_region(*box, data_type=2)],
                syntax="jpeg")
    # Split screen: B-mode region on the left, its colour twin on the right (a region of its own).
    split = np.zeros((4, 96, 176, 3), np.uint8)
    split[:, :64, 4:84] = frames[:, :64, 8:88]
    split[:, :64, 92:172] = flow
    write_dicom(root / "A4C" / "split.dcm", split, regions=[us_region(4, 0, 83, 63), us_region(92, 0, 171, 63)],
                syntax="rle")
    m, exc, _ = do_import("folder", root, tmp_path / "out")
    assert len(m) == 1 and "bmode" in m.df["path"].iloc[0]
    assert reasons(exc) == {"A4C/doppler.dcm": "colour", "A4C/split.dcm": "colour"}
    assert exc["detail"].str.contains("colour flow covers").all()


def test_videos_importer_reads_dicom_loops_and_patient_ids(tmp_path):
    root = tmp_path / "loops"
    frames, box = loop(5, 6)
    write_dicom(root / "a.dcm", frames, patient_id="X1", regions=[us_region(*box)], syntax="jpeg")
    write_dicom(root / "b.dcm", frames[..., 0], patient_id="X2", syntax="rle", regions=[us_region(*box)])
    (root / "labels.csv").write_text("file,view,site\na.dcm,A4C,north\nb.dcm,PLAX,south\n")
    m, exc, _ = do_import("videos", root, tmp_path / "out", frames="all", source="trial")
    df = m.df
    assert len(df) == 10 and len(exc) == 0
    assert dict(zip(df["view"], df["patient_id"])) == {"A4C": "trial-X1", "PLAX": "trial-X2"}
    assert set(df["meta_site"]) == {"north", "south"} and set(df["meta_manufacturer"]) == {"EchoCorp"}


def test_min_frames_follows_the_frame_selection(tmp_path):
    """--frames random needs one frame (a 6-frame GIF imports); dissimilar needs 10 and says so."""
    root = tmp_path / "src"
    write_gif(root / "A4C" / "loop.gif", echo_clip(6, 7))
    frames, box = loop(6, 8)
    write_dicom(root / "A4C" / "short.dcm", frames, regions=[us_region(*box)])
    m, exc, summary = do_import("folder", root, tmp_path / "out")
    assert len(m) == 2 and len(exc) == 0 and summary["settings"]["min_frames"] == 1
    _, exc2, _ = do_import("folder", root, tmp_path / "out2", frames="dissimilar")
    assert set(exc2["reason"]) == {"too-short"}
    assert exc2["detail"].str.contains("6 frame\\(s\\) < 10, the fewest --frames dissimilar compares").all()
    m3, exc3, _ = do_import("folder", root, tmp_path / "out3", frames="dissimilar", min_frames=4)
    assert len(exc3) == 0 and len(m3) >= 2
    _, exc4, _ = do_import("folder", root, tmp_path / "out4", min_frames=8)
    assert exc4["detail"].str.contains("< --min_frames 8").all()


def test_dicom_import_resumes_after_sigkill(tmp_path):
    """Kill the import mid-way (SIGKILL: no clean-up); the re-run decodes only what was left."""
    root, out = tmp_path / "src", tmp_path / "out"
    n = 24
    for k in range(n):
        frames, box = loop(3, k)
        write_dicom(root / "A4C" / f"c{k:02d}.dcm", frames, patient_id=f"P{k}", regions=[us_region(*box)], syntax="rle")
    args = [PYTHON, "gen/prepare.py", "import", "folder", "--src", str(root), "--out", str(out),
            "--size", str(SIZE), "--workers", "1"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    cache = out / ".cache"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if cache.is_dir() and len(list(cache.glob("*.json"))) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the import finished before it could be killed; use more files"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(cache.glob("*.json")))
    assert 4 <= done < n and not (out / "manifest.csv").exists()
    proc2 = run_cli(args)
    assert "import into" in proc2.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == n and summary["n_decoded_now"] <= n - done + 1  # at most one redone
    m = pd.read_csv(out / "manifest.csv", dtype=str)
    assert sorted(m["patient_id"]) == sorted(f"src-P{k}" for k in range(n))
