"""Every importer on a tiny fixture in its dataset's layout: manifest rows, images, exclusions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from echosynth.gen.core.config import build
from echosynth.gen.data import preprocess as pp
from echosynth.gen.data.importers import IMPORTERS, import_dataset
from echosynth.gen.data.manifest import read_manifest
from echosynth.gen.prepare import PrepareConfig
from tests.conftest import PYTHON, run_cli
from tests.importer_fixtures import (
    corrupt,
    echo_clip,
    echo_frame,
    hex64,
    write_dicom,
    write_gif,
    write_medical,
    write_png,
    write_video,
)

SIZE = 32


def do_import(fmt: str, src: Path, out: Path, **overrides):
    """Import in-process with 1 worker; return (manifest, excluded table, summary)."""
    cfg = build(PrepareConfig, overrides={"command": "import", "format": fmt, "src": str(src), "out": str(out),
                                          "size": SIZE, "workers": 1, **overrides})
    summary = import_dataset(IMPORTERS[fmt], cfg, progress=False)
    m = read_manifest(out / "manifest.csv", decode_images=True, check_sha1=True)
    exc = pd.read_csv(out / "excluded.csv", dtype=str, keep_default_na=False)
    return m, exc, summary


def reasons(exc: pd.DataFrame) -> dict[str, str]:
    return dict(zip(exc["file"], exc["reason"]))


def png(m, i: int) -> np.ndarray:
    with Image.open(m.abspath(i)) as im:
        assert im.mode == "L" and im.size == (SIZE, SIZE)  # 8-bit grayscale at --size
        return np.asarray(im)


# ----------------------------------------------------------------------------------------------
# TMED2


def _tmed2_image(seed: int) -> np.ndarray:
    return pp.resize(echo_frame(seed=seed)[:, 8:72], 48)


def test_tmed2_labels_cap_unknown_corrupt_missing(tmp_path):
    root = tmp_path / "approved_users_only"
    lab = root / "view_and_diagnosis_labeled_set" / "labeled"
    rows = ["query_key,view_label,diagnosis_label"]
    for i in range(5):
        write_png(lab / f"12s1_{i}.png", _tmed2_image(i))
        rows.append(f"12s1_{i}.png,A4C,no_AS")
    for i, view in enumerate(("PLAX", "PSAX", "A2C", "A4CorA2CorOther")):
        write_png(lab / f"7s2_{i}.png", _tmed2_image(10 + i))
        rows.append(f"7s2_{i}.png,{view},mild_AS")
    write_png(root / "view_and_diagnosis_labeled_set" / "unlabeled" / "7s2_0.png", _tmed2_image(99))  # same name
    corrupt(lab / "9s1_0.png")
    write_png(lab / "9s1_2.png", echo_clip(1, 3, doppler=True)[0])
    rows += ["9s1_0.png,PLAX,no_AS", "9s1_1.png,PLAX,no_AS", "9s1_2.png,PLAX,no_AS"]  # corrupt, missing, Doppler
    (root / "labels_per_image.csv").write_text("\n".join(rows) + "\n")

    m, exc, summary = do_import("tmed2", root, tmp_path / "out", max_per_patient_view=3)
    df = m.df
    assert sorted(df["view"]) == ["A2C", "A4C", "A4C", "A4C", "PLAX", "PSAX"]
    assert set(df["source"]) == {"tmed2"} and set(df["patient_id"]) == {"tmed2-12", "tmed2-7"}
    assert (df["split"] == "").all() and df["frame"].isna().all()
    r = reasons(exc)
    assert r["view_and_diagnosis_labeled_set/labeled/9s1_0.png"] == "unreadable"
    assert r["9s1_1.png"] == "missing-file"
    assert r["view_and_diagnosis_labeled_set/labeled/9s1_2.png"] == "colour"
    assert "A4CorA2CorOther" in exc.loc[exc["reason"] == "unknown-label", "detail"].iloc[0]
    assert (exc["reason"] == "per-patient-limit").sum() == 2
    assert summary["excluded_by_reason"] == {"unreadable": 1, "missing-file": 1, "unknown-label": 1,
                                             "per-patient-limit": 2, "colour": 1}
    # The labelled folder wins over the unlabelled copy, and TMED2 stills are only resized.
    plax = df.index[df["view"] == "PLAX"][0]
    assert df.at[plax, "meta_diagnosis"] == "mild_AS" and df.at[plax, "meta_study"] == "7s2"
    assert np.array_equal(png(m, plax), pp.resize(_tmed2_image(10), SIZE))


def test_tmed2_fold_csvs_with_source_folder(tmp_path):
    root = tmp_path / "tmed"
    folder = "view_and_diagnosis_labeled_set/labeled"
    for i in range(3):  # unzipped one level too deep: labeled/labeled/
        write_png(root / folder / "labeled" / f"{30 + i}s1_0.png", _tmed2_image(i))
    header = "query_key,view_label,diagnosis_label,SourceFolder,view_classifier_split,diagnosis_classifier_split"
    body = [f"{30 + i}s1_0.png,{v},no_AS,{folder},{s},{s}" for i, (v, s) in
            enumerate([("A2C", "train"), ("A4C", "val"), ("PSAX", "test")])]
    for fold in range(2):  # rows repeat across folds: imported once
        (root / "DEV479").mkdir(parents=True, exist_ok=True)
        (root / "DEV479" / f"TMED2_fold{fold}_labeledpart.csv").write_text("\n".join([header] + body) + "\n")
    m, exc, _ = do_import("tmed2", root, tmp_path / "out")
    assert len(m) == 3 and exc.empty
    assert dict(zip(m.df["view"], m.df["meta_original_split"])) == {"A2C": "train", "A4C": "val", "PSAX": "test"}


# ----------------------------------------------------------------------------------------------
# EchoNet-Dynamic: colour checks, KS groups, --exclude-groups, resume, overwrite


def _tinted(clip: np.ndarray) -> np.ndarray:
    """'Abnormal colouring' a person may reject: a warm tint (channel differences ~14) everywhere."""
    out = clip.astype(int)
    out[..., 0] += 7
    out[..., 2] -= 7
    return np.clip(out, 0, 255).astype(np.uint8)


def _dynamic(root: Path) -> None:
    write_video(root / "Videos" / "0XA1.avi", echo_clip(12, 1))
    write_video(root / "Videos" / "0XA2.avi", echo_clip(12, 2))
    write_video(root / "Videos" / "0XA3.avi", _tinted(echo_clip(12, 3)))
    write_video(root / "Videos" / "0XD4.avi", echo_clip(12, 4, doppler=True))
    write_video(root / "Videos" / "0XS5.avi", echo_clip(3, 5))
    corrupt(root / "Videos" / "0XC6.avi")
    names = ["0XA1", "0XA2", "0XA3", "0XD4", "0XS5", "0XC6", "0XM7"]
    (root / "FileList.csv").write_text("FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split\n" +
                                       "".join(f"{n},55.5,20,45,64,80,50,12,{s}\n" for n, s in
                                               zip(names, ["TRAIN", "VAL", "TEST"] * 3)))


def test_echonet_dynamic_colour_groups_exclusion_and_resume(tmp_path):
    src, out = tmp_path / "EchoNet-Dynamic", tmp_path / "out"
    _dynamic(src)
    m, exc, summary = do_import("echonet-dynamic", src, out, min_frames=4)  # 0XS5 has 3 frames
    df = m.df
    assert sorted(df["patient_id"]) == ["dynamic-0XA1", "dynamic-0XA2", "dynamic-0XA3"]
    assert (df["view"] == "A4C").all() and df["frame"].between(0, 11).all()
    assert list(df["video_id"]) == list(df["patient_id"])
    assert list(df["meta_original_split"]) == ["TRAIN", "VAL", "TEST"]
    r = reasons(exc)
    assert r["Videos/0XD4.avi"] == "colour" and r["Videos/0XS5.avi"] == "too-short"
    assert r["Videos/0XC6.avi"] == "unreadable" and r["Videos/0XM7.avi"] == "missing-file"
    assert "0XC6.avi" in exc.loc[exc["reason"] == "unreadable", "detail"].iloc[0]
    # Burnt-in text is outside the cone and cropped away: the preprocessed frame is mostly sector.
    img = png(m, 0)
    assert img.mean() > 40

    groups = pd.read_csv(out / "groups" / "groups.csv")
    members = pd.read_csv(out / "groups" / "members.csv").set_index("key")["group"]
    assert summary["colour_groups"] == len(groups) == 3  # gray, tinted, Doppler
    assert members["Videos/0XA1.avi"] == members["Videos/0XA2.avi"] == 0
    tinted = int(members["Videos/0XA3.avi"])
    assert tinted != 0 and members["Videos/0XD4.avi"] not in (0, tinted)
    for name in groups["example"]:
        with Image.open(out / "groups" / name) as im:
            assert im.mode == "RGB"
    with Image.open(out / "groups" / "overview.png") as im:
        assert im.size == (3 * 160, 136)

    # Re-run with the person's decision: no file is decoded again, the tinted group is dropped.
    before = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    m2, exc2, summary2 = do_import("echonet-dynamic", src, out, exclude_groups=[tinted], min_frames=4)
    assert sorted(m2.df["patient_id"]) == ["dynamic-0XA1", "dynamic-0XA2"]
    assert reasons(exc2)["Videos/0XA3.avi"] == "colour-group"
    assert {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")} == before
    assert summary2["excluded_groups"] == [tinted]
    with pytest.raises(ValueError, match="no such colour group"):
        do_import("echonet-dynamic", src, out, exclude_groups=[7], min_frames=4)
    # Other settings need --overwrite; with it the import is redone.
    with pytest.raises(FileExistsError, match="other settings.*size"):
        do_import("echonet-dynamic", src, out, size=24, min_frames=4)
    cfg = build(PrepareConfig, overrides={"command": "import", "format": "echonet-dynamic", "src": str(src),
                                          "out": str(out), "size": 24, "workers": 2, "overwrite": True,
                                          "min_frames": 4})
    import_dataset(IMPORTERS["echonet-dynamic"], cfg, progress=False)
    m3 = read_manifest(out / "manifest.csv", decode_images=True)
    assert len(m3) == 3 and load_size(m3) == (24, 24)
    # Same frames as before: the random frame belongs to the item, not to the worker count.
    assert list(m3.df["frame"]) == list(m.df["frame"])


def load_size(m) -> tuple[int, int]:
    with Image.open(m.abspath(0)) as im:
        return im.size


def test_doppler_detector_can_be_disabled(tmp_path):
    src = tmp_path / "dyn"
    write_video(src / "Videos" / "0XD1.avi", echo_clip(12, 1, doppler=True))
    (src / "FileList.csv").write_text("FileName,Split\n0XD1,TRAIN\n")
    m, exc, _ = do_import("echonet-dynamic", src, tmp_path / "out", doppler_threshold=0)
    assert len(m) == 1 and exc.empty


# ----------------------------------------------------------------------------------------------
# EchoNet-LVH: native resolution, Batch folders, all / dissimilar frames


def _lvh(root: Path) -> None:
    write_video(root / "Batch1" / "0XB1.avi", echo_clip(12, 1, h=72, w=96))
    write_video(root / "Batch2" / "0XB2.avi", echo_clip(12, 2, h=72, w=96))
    write_video(root / "Batch2" / "0XD3.avi", echo_clip(12, 3, doppler=True, h=72, w=96))
    corrupt(root / "Batch3" / "0XC4.avi")
    rows = [",HashedFileName,Calc,CalcValue,Frame,X1,X2,Y1,Y2,Frames,FPS,Width,Height,split"]
    k = 0
    for name, split in (("0XB1", "train"), ("0XB2", "val"), ("0XB9", "test"), ("0XD3", "test"), ("0XC4", "test")):
        for calc in ("IVSd", "LVIDd", "LVPWd"):
            rows.append(f"{k},{name},{calc},1.1,3,10,20,30,40,12,50,96,72,{split}")
            k += 1
    (root / "MeasurementsList.csv").write_text("\n".join(rows) + "\n")


def test_echonet_lvh_all_and_dissimilar_frames(tmp_path):
    src = tmp_path / "EchoNet-LVH"
    _lvh(src)
    m, exc, _ = do_import("echonet-lvh", src, tmp_path / "all", frames="all")
    df = m.df
    assert len(df) == 24 and (df["view"] == "PLAX").all() and set(df["source"]) == {"lvh"}
    assert sorted(df.loc[df["video_id"] == "lvh-0XB1", "frame"]) == list(range(12))
    assert set(df["patient_id"]) == {"lvh-0XB1", "lvh-0XB2"}
    assert reasons(exc) == {"0XB9.avi": "missing-file", "Batch2/0XD3.avi": "colour", "Batch3/0XC4.avi": "unreadable"}
    assert set(df["meta_original_split"]) == {"train", "val"}

    m2, _, _ = do_import("echonet-lvh", src, tmp_path / "dis", frames="dissimilar", dissimilar_quantile=0.25)
    frames_b1 = sorted(m2.df.loc[m2.df["video_id"] == "lvh-0XB1", "frame"])
    assert 1 <= len(frames_b1) <= 4
    # The same selection as the function applied to the preprocessed frames of "all".
    sel = m.df[m.df["video_id"] == "lvh-0XB1"].sort_values("frame")
    stack = np.stack([np.asarray(Image.open(m.root / p)) for p in sel["path"]])
    assert frames_b1 == pp.dissimilar_frames(stack, 0.25)


# ----------------------------------------------------------------------------------------------
# CAMUS: NIfTI and legacy MHD/RAW


def _camus_image(seed: int, h: int = 60, w: int = 50) -> np.ndarray:
    return pp.resize(echo_frame(seed=seed)[:, 10:70], 60)[:h, :w]


def test_camus_nifti(tmp_path):
    root = tmp_path / "CAMUS_public" / "database_nifti"
    p1 = root / "patient0001"
    for ch in ("2CH", "4CH"):
        for ph in ("ED", "ES"):
            write_medical(p1 / f"patient0001_{ch}_{ph}.nii.gz", _camus_image(len(ch + ph)))
            write_medical(p1 / f"patient0001_{ch}_{ph}_gt.nii.gz", np.zeros((60, 50), np.uint8))
        write_medical(p1 / f"patient0001_{ch}_half_sequence.nii.gz", np.zeros((3, 60, 50), np.uint8))
        (p1 / f"Info_{ch}.cfg").write_text("ED: 1\nES: 14\nNbFrame: 14\nImageQuality: Good\n")
    write_medical(root / "patient0002" / "patient0002_3CH_ED.nii.gz", _camus_image(5))
    corrupt(root / "patient0002" / "patient0002_4CH_ES.nii.gz")
    m, exc, _ = do_import("camus", tmp_path / "CAMUS_public", tmp_path / "out")
    df = m.df
    assert sorted(df["view"]) == ["A2C", "A2C", "A4C", "A4C"] and set(df["patient_id"]) == {"camus-patient0001"}
    assert sorted(df["meta_phase"]) == ["ED", "ED", "ES", "ES"] and set(df["meta_image_quality"]) == {"Good"}
    ed = df[(df["meta_phase"] == "ED")]
    assert set(ed["meta_sequence_frame"]) == {0}
    r = reasons(exc)
    assert r["database_nifti/patient0002/patient0002_3CH_ED.nii.gz"] == "unknown-label"
    assert r["database_nifti/patient0002/patient0002_4CH_ES.nii.gz"] == "unreadable"
    # No overlays: only centre-crop + bicubic resize, orientation kept.
    i = df.index[df["path"].str.contains("2CH_ED")][0]
    assert np.array_equal(png(m, i), pp.resize(pp.center_crop_square(_camus_image(5)), SIZE))


def test_camus_legacy_mhd_anisotropic(tmp_path):
    root = tmp_path / "camus"
    img = _camus_image(1, h=30, w=60)
    for part in ("training", "testing"):
        for ch in ("2CH", "4CH"):
            write_medical(root / part / "patient0001" / f"patient0001_{ch}_ED.mhd", img, spacing=(0.3, 0.6))
    (root / "training" / "patient0001" / "patient0001_2CH_ES.mhd").write_text(
        "ObjectType = Image\nNDims = 2\nDimSize = 60 30\nElementType = MET_UCHAR\nElementDataFile = gone.raw\n")
    m, exc, _ = do_import("camus", root, tmp_path / "out")
    assert sorted(m.df["patient_id"].unique()) == ["camus-patient0001", "camus-testing-patient0001"]
    assert len(m) == 4 and (root / "training/patient0001/patient0001_2CH_ED.raw").is_file()
    assert reasons(exc) == {"training/patient0001/patient0001_2CH_ES.mhd": "unreadable"}
    # 30 rows at 0.6 mm and 60 columns at 0.3 mm are a square: resampled, not cropped.
    expect = pp.resize(pp.resample_isotropic(img, (0.3, 0.6)), SIZE)
    assert np.abs(png(m, 0).astype(int) - expect).max() <= 1


# ----------------------------------------------------------------------------------------------
# Unity


def test_unity_frames_grouped_by_video(tmp_path):
    root = tmp_path / "unity"
    clips = {i: echo_clip(3, i, doppler=(i == 3)) for i in range(4)}
    codes = {}
    for i, clip in clips.items():
        h = hex64(i)
        for f in range(2):
            code = f"01-{h}-{f:04d}"
            codes[(i, f)] = code
            write_png(root / "png-cache" / "01" / h[:2] / h[2:4] / f"{code}.png", clip[f])
    corrupt(root / "png-cache" / "01" / "zz" / f"01-{hex64(9)}-0000.png")
    rows = ["file,view", f"{codes[(0, 0)]}.png,A4C", f"png-cache/01/x/{codes[(0, 1)]}.png,a4c", f"01-{hex64(1)},PLAX",
            f"{codes[(2, 0)]},A3C", f"{codes[(3, 0)]},A2C", f"01-{hex64(9)}-0000,A2C", f"01-{hex64(8)}-0000,A2C"]
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "view_index.csv").write_text("\n".join(rows) + "\n")
    m, exc, _ = do_import("unity", root, tmp_path / "out")
    df = m.df.sort_values(["patient_id", "frame"])
    v0, v1 = f"unity-01-{hex64(0)}", f"unity-01-{hex64(1)}"
    assert list(zip(df["patient_id"], df["frame"], df["view"])) == sorted(
        [(v0, 0, "A4C"), (v0, 1, "A4C"), (v1, 0, "PLAX"), (v1, 1, "PLAX")])
    assert (df["video_id"] == df["patient_id"]).all()
    r = reasons(exc)
    assert r[codes[(2, 0)].lower()] == "unknown-label"
    assert r[f"01-{hex64(8)}-0000"] == "missing-file"
    assert sorted(exc["reason"]) == ["colour", "missing-file", "unknown-label", "unreadable"]


# ----------------------------------------------------------------------------------------------
# CACTUS


def test_cactus_views_and_grades(tmp_path):
    root = tmp_path / "CactusDataset" / "Images"
    names = {"A4C": "A4C", "PL": "PLAX", "psav": "PSAV", "PSMV": "PSMV", "SC": "SC", "Random": "Random"}
    grade_rows = ["Image_Name,Grade"]
    for k, folder in enumerate(names):
        write_png(root / folder / f"{folder}_{k}.png", np.repeat(echo_frame(seed=k)[..., None], 3, 2))
        grade_rows.append(f"{folder}_{k}.png,{k + 3}")
    write_png(root / "A4C" / "A4C_extra.png", echo_frame(seed=9))
    grade_rows.append("A4C_extra.png,12")  # out of range: kept without a grade
    write_png(root / "Misc" / "m.png", echo_frame(seed=8))
    corrupt(root / "SC" / "broken.png")
    write_png(root / "PL" / "PL_doppler.png", echo_clip(1, 4, doppler=True)[0])
    (tmp_path / "CactusDataset" / "grades.csv").write_text("\n".join(grade_rows) + "\n")
    m, exc, _ = do_import("cactus", tmp_path / "CactusDataset", tmp_path / "out")
    df = m.df.set_index(m.df["path"].str.extract(r"([^_/]+_[^_/]+)\.png$")[0])
    assert {f: df.at[f"{f}_{k}", "view"] for k, f in enumerate(names)} == names
    assert {f"{f}_{k}": df.at[f"{f}_{k}", "quality"] for k, f in enumerate(names)} == \
        {f"{f}_{k}": k + 3.0 for k, f in enumerate(names)}
    assert np.isnan(df.at["A4C_extra", "quality"]) and "outside 0–10" in df.at["A4C_extra", "meta_grade_note"]
    assert df["patient_id"].is_unique and df["patient_id"].str.startswith("cactus-").all()
    assert reasons(exc) == {"Images/Misc/m.png": "unknown-label", "Images/SC/broken.png": "unreadable",
                            "Images/PL/PL_doppler.png": "colour"}


# ----------------------------------------------------------------------------------------------
# Generic folder (PNG, DICOM still + cine, AVI, GIF, MP4 Doppler) and videos + CSV


def test_folder_all_file_types(tmp_path):
    root = tmp_path / "hospitalX"
    write_png(root / "A4C" / "still.png", echo_clip(1, 0)[0])
    write_dicom(root / "A2C" / "still.dcm", echo_frame(seed=1)[None], patient_id="PAT-9")
    write_dicom(root / "a2c" / "cine.dcm", echo_clip(12, 2)[..., 0], patient_id="PAT-9")
    write_dicom(root / "PSAX" / "IM0001", echo_frame(seed=3)[None], patient_id="PAT 10")  # no suffix
    write_video(root / "PLAX" / "clip.avi", echo_clip(12, 4))
    write_gif(root / "psax" / "loop.gif", echo_clip(12, 5))
    write_video(root / "A4C" / "doppler.mp4", echo_clip(12, 6, doppler=True))
    corrupt(root / "A4C" / "broken.jpg")
    write_png(root / "Other" / "x.png", echo_frame(seed=7))
    (root / "A4C" / "notes.txt").write_text("ignored")
    m, exc, _ = do_import("folder", root, tmp_path / "out")
    df = m.df.set_index(m.df["path"].str.extract(r"/([^/]+?)(?:_f\d{4})?\.png$")[0])
    assert set(df["source"]) == {"hospitalx"}
    assert df.at["A2C__still", "patient_id"] == df.at["a2c__cine", "patient_id"] == "hospitalx-PAT-9"
    assert df.at["PSAX__IM0001", "patient_id"] == "hospitalx-PAT_10"
    assert df.at["a2c__cine", "view"] == "A2C" and df.at["psax__loop", "view"] == "PSAX"
    assert 0 <= df.at["a2c__cine", "frame"] < 12 and pd.isna(df.at["A2C__still", "frame"])
    assert df.at["PLAX__clip", "video_id"] == "hospitalx-PLAX__clip"
    assert reasons(exc) == {"A4C/broken.jpg": "unreadable", "A4C/doppler.mp4": "colour", "Other/x.png": "unknown-label"}
    # --source renames the source and the patient prefix.
    m2, _, _ = do_import("folder", root, tmp_path / "out2", source="siteB", cone="off")
    assert set(m2.df["source"]) == {"siteB"} and m2.df["patient_id"].str.startswith("siteB-").all()


def test_videos_with_label_csv(tmp_path):
    root = tmp_path / "clips"
    write_video(root / "a" / "one.avi", echo_clip(12, 1))
    write_video(root / "two.mp4", echo_clip(12, 2))
    write_video(root / "three.avi", echo_clip(12, 3))
    corrupt(root / "bad.avi")
    (root / "labels.csv").write_text("path,view,patient,quality,site\n"
                                     "a/one.avi,A4C,p1,7,north\ntwo.mp4,plax,p1,,south\nthree.avi,A5C,p2,3,north\n"
                                     "bad.avi,A2C,p3,2,north\ngone.avi,A2C,p4,2,north\n")
    m, exc, _ = do_import("videos", root, tmp_path / "out", frames="all", source="trial")
    df = m.df
    assert len(df) == 24 and set(df["patient_id"]) == {"trial-p1"}
    one = df[df["path"].str.contains("one")]
    assert set(one["quality"]) == {7.0} and set(one["meta_site"]) == {"north"} and set(one["view"]) == {"A4C"}
    assert df.loc[df["path"].str.contains("two"), "quality"].isna().all()
    assert reasons(exc) == {"three.avi": "unknown-label", "bad.avi": "unreadable", "gone.avi": "missing-file"}


# ----------------------------------------------------------------------------------------------
# The command line, end to end into `prepare.py split`


def test_cli_import_then_split(tmp_path, capsys):
    src = tmp_path / "EchoNet-Dynamic"
    for i in range(6):
        write_video(src / "Videos" / f"0XV{i}.avi", echo_clip(10, i))
    corrupt(src / "Videos" / "0XBAD.avi")
    (src / "FileList.csv").write_text("FileName,Split\n" + "".join(f"0XV{i},TRAIN\n" for i in range(6)) + "0XBAD,TEST\n")
    out = tmp_path / "imported"
    proc = run_cli([PYTHON, "gen/prepare.py", "import", "echonet-dynamic", "--src", str(src), "--out", str(out),
                    "--size", "32", "--workers", "2"])
    assert "A4C" in proc.stdout and "unreadable 1" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 6 and summary["by_source"] == {"dynamic": 6}
    from echosynth.gen.prepare import main  # the error paths in-process: a subprocess costs seconds

    assert main(["import", "echonet-dynamic", "--src", str(src), "--out", str(out), "--size", "48"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["import", "nope", "--src", str(src), "--out", str(out)])
    assert e.value.code == 2 and "echonet-dynamic" in capsys.readouterr().err
    run_cli([PYTHON, "gen/prepare.py", "split", "--manifest", str(out / "manifest.csv"), "--out",
             str(tmp_path / "split"), "--subsets", "2"])
    split = read_manifest(tmp_path / "split" / "manifest.csv", decode_images=True)
    assert set(split.df["split"]) <= {"train", "val", "test"} and (split.df["split"] != "").all()


def test_videos_from_phantom_clips(tmp_path):
    """Realistic clips from the phantom's video mode (EchoNet-Dynamic style, 112×112 with colour)."""
    phantom = pytest.importorskip("echosynth.gen.data.phantom")
    if not hasattr(phantom, "render_clip"):
        pytest.skip("the phantom has no video mode yet")
    items = [it for it in phantom.plan(60, seed=0) if it.source == "dynamic"][:3]
    root = tmp_path / "phantom-clips"
    rows = ["file,view,patient_id"]
    for k, it in enumerate(items):
        write_video(root / f"{k}.avi", phantom.render_clip(it, 0, n_frames=10, doppler=(k == 2)))
        rows.append(f"{k}.avi,{it.view},{it.patient_id}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    m, exc, summary = do_import("videos", root, tmp_path / "out")
    assert sorted(m.df["path"].str.extract(r"/(\d)_f")[0]) == ["0", "1"]
    assert reasons(exc) == {"2.avi": "colour"}
    assert summary["colour_groups"] >= 2  # the Doppler clip is a distribution of its own


def test_interrupted_import_resumes_and_relabelled_files_are_redone(tmp_path):
    from echosynth.gen.data.importers.base import _cache_path

    root, out = tmp_path / "clips", tmp_path / "out"
    for k in range(3):
        write_video(root / f"c{k}.avi", echo_clip(10, k))
    labels = "file,view\nc0.avi,A4C\nc1.avi,A4C\nc2.avi,PLAX\n"
    (root / "labels.csv").write_text(labels)
    _, _, first = do_import("videos", root, out)
    assert first["n_decoded_now"] == 3
    # An interruption before the manifest: c2's result was never written.
    (out / "manifest.csv").unlink()
    _cache_path(out, "c2.avi").unlink()
    (root / "labels.csv").write_text(labels.replace("c1.avi,A4C", "c1.avi,A2C"))  # and a label fix
    m, _, second = do_import("videos", root, out)
    assert second["n_decoded_now"] == 2  # c2 (not done) and c1 (its label changed); c0 reused
    assert dict(zip(m.df["path"].str.extract(r"/(c\d)_")[0], m.df["view"])) == {"c0": "A4C", "c1": "A2C", "c2": "PLAX"}


def test_bad_label_files_name_the_file_and_column(tmp_path):
    src = tmp_path / "dyn"
    (src / "Videos").mkdir(parents=True)
    (src / "FileList.csv").write_text("Name,Split\nx,TRAIN\n")
    with pytest.raises(ValueError, match=r"FileList\.csv: missing column\(s\) FileName"):
        do_import("echonet-dynamic", src, tmp_path / "out")
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "labels.csv").write_text("movie,kind\na.avi,A4C\n")
    with pytest.raises(ValueError, match=r"labels\.csv: no file column"):
        do_import("videos", clips, tmp_path / "out2")
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        do_import("camus", tmp_path / "nowhere", tmp_path / "out3")
