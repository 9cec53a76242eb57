"""Tiny on-disk datasets in each importer's layout, built inside the tests (nothing downloaded).

Frames are small synthetic echoes: a fan-shaped sector of speckle with a dark cavity that moves
over time, burnt-in text blocks outside the sector, an ECG trace under it (green in colour
clips), and optionally a red/blue colour-Doppler patch inside the sector.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 64, 80  # fixture frame size (even sides for yuv420p video)


def sector_mask(h: int = H, w: int = W) -> np.ndarray:
    """The fan: apex at the top centre, ±40°, radius 0.8 h (clear of the ECG trace)."""
    y, x = np.mgrid[0:h, 0:w]
    dx, dy = x - w / 2, y - 2.0
    r = np.hypot(dx, dy)
    ang = np.degrees(np.arctan2(dx, dy))
    return (r < 0.8 * h) & (np.abs(ang) < 40) & (dy > 0)


def echo_frame(t: int = 0, seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    """A gray (h,w) uint8 frame: speckle sector, moving cavity, text blocks, ECG line."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.uint8)
    cone = sector_mask(h, w)
    img[cone] = rng.integers(70, 200, cone.sum())
    y, x = np.mgrid[0:h, 0:w]
    cy, cx = h * 0.45, w / 2 + 6 * np.sin(t / 2.0 + seed)
    cavity = ((y - cy) / (h * 0.16)) ** 2 + ((x - cx) / (w * 0.10)) ** 2 < 1
    img[cone & cavity] = 15
    img[1:5, 1:12] = 230  # burnt-in "text" in the top-left corner
    img[2:4, w - 12:w - 2] = 220
    return img


def ecg_row(h: int = H) -> int:
    return h - 3


def echo_clip(n: int = 12, seed: int = 0, doppler: bool = False, colour_ecg: bool = True,
              h: int = H, w: int = W) -> np.ndarray:
    """An RGB clip (n,h,w,3): gray echo frames, a green ECG trace, optional colour Doppler."""
    frames = []
    for t in range(n):
        g = echo_frame(t, seed, h, w)
        rgb = np.repeat(g[..., None], 3, axis=2)
        xs = np.arange(w)
        ys = (ecg_row(h) - 1.5 * np.sin(xs / 3.0 + t)).round().astype(int)
        rgb[ys, xs] = (40, 220, 60) if colour_ecg else (200, 200, 200)
        if doppler:
            cone = sector_mask(h, w)
            yy, xx = np.mgrid[0:h, 0:w]
            jet = cone & (yy > h * 0.3) & (yy < h * 0.7) & (np.abs(xx - w / 2) < w * 0.18)
            rgb[jet & (xx < w / 2)] = (220, 30, 30)
            rgb[jet & (xx >= w / 2)] = (30, 60, 230)
        frames.append(rgb)
    return np.stack(frames)


def write_png(path: Path, image: np.ndarray) -> Path:
    """Save a uint8 (H,W) or (H,W,3) array as PNG (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def write_video(path: Path, frames: np.ndarray, fps: int = 25) -> Path:
    """Write RGB frames (T,H,W,3) as AVI/MP4 with PyAV (MPEG-4 Part 2, high quality)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "2"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_gif(path: Path, frames: np.ndarray) -> Path:
    """Write an animated GIF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ims = [Image.fromarray(f) for f in frames]
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=40, loop=0)
    return path


# Identifying values written into every test DICOM: none may reach a manifest.
IDENTIFYING = {"PatientName": "Doe^Jane", "PatientBirthDate": "19610203", "InstitutionName": "St Elsewhere Hospital",
               "StudyDate": "20240115", "StudyTime": "093012", "AccessionNumber": "ACC778899",
               "ReferringPhysicianName": "House^Gregory", "OperatorsName": "Tech^Terry", "StationName": "ECHO-LAB-3",
               "DeviceSerialNumber": "SN-4242-XY", "StudyID": "ST555"}


def us_region(x0: int, y0: int, x1: int, y1: int, data_type: int = 1, delta_cm: tuple[float, float] = (0.03, 0.03)):
    """One item of the Sequence of Ultrasound Regions (2D, inclusive box, cm spacing)."""
    from pydicom.dataset import Dataset

    r = Dataset()
    r.RegionSpatialFormat = 1
    r.RegionDataType = data_type
    r.RegionFlags = 0
    r.RegionLocationMinX0, r.RegionLocationMinY0, r.RegionLocationMaxX1, r.RegionLocationMaxY1 = x0, y0, x1, y1
    r.PhysicalUnitsXDirection = r.PhysicalUnitsYDirection = 3
    r.PhysicalDeltaX, r.PhysicalDeltaY = delta_cm
    return r


def write_dicom(path: Path, frames: np.ndarray, patient_id: str = "P001", syntax: str = "explicit",
                regions: list | None = None, fields: dict | None = None, sop: str = "us-multiframe",
                pixels: bool = True) -> Path:
    """Write uint8 frames (T,H,W) gray or (T,H,W,3) RGB (T = 1: a still) as a scanner would.

    syntax: "explicit" (uncompressed, Explicit VR Little Endian: MONOCHROME2 or RGB), "rle"
    (RLE Lossless through pydicom's encoder) or "jpeg" (JPEG Baseline: colour frames as
    YBR_FULL_422, encoded by Pillow with 4:2:2 chroma and encapsulated). `regions` is a
    Sequence of Ultrasound Regions (see `us_region`); `fields` sets further tags; sop "sr"
    writes a Comprehensive SR instead (no pixels); pixels=False leaves PixelData out.
    """
    import io

    import pydicom
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (
        ComprehensiveSRStorage,
        ExplicitVRLittleEndian,
        JPEGBaseline8Bit,
        RLELossless,
        UltrasoundImageStorage,
        UltrasoundMultiFrameImageStorage,
        generate_uid,
    )

    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    sop_uid = {"us-multiframe": UltrasoundMultiFrameImageStorage, "us": UltrasoundImageStorage,
               "sr": ComprehensiveSRStorage}[sop]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_uid
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_uid
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID = patient_id
    for k, v in IDENTIFYING.items():
        setattr(ds, k, v)
    if sop == "sr":
        ds.Modality = "SR"
        ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
        item = Dataset()
        item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", "LV EF 55%"
        ds.ContentSequence = [item]
        pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
        return path
    ds.Modality = "US"
    ds.Manufacturer, ds.ManufacturerModelName = "EchoCorp", "Vivid Test 9"
    ds.TransducerData = ["M5S", "phased"]
    ds.FrameTime, ds.CineRate = 20.0, 50
    colour = frames.ndim == 4
    ds.Rows, ds.Columns = frames.shape[1], frames.shape[2]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if len(frames) > 1 or sop == "us-multiframe":
        ds.NumberOfFrames = len(frames)
        ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
    if regions:
        ds.SequenceOfUltrasoundRegions = regions
    for k, v in (fields or {}).items():
        setattr(ds, k, v)
    if not pixels:
        pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
        return path
    data = frames if len(frames) > 1 else frames[0]
    if syntax == "explicit":
        ds.PixelData = data.tobytes()
    elif syntax == "rle":
        ds.compress(RLELossless, data, generate_instance_uid=False)
    elif syntax == "jpeg":
        from PIL import Image

        encoded = []
        for f in frames:
            buf = io.BytesIO()
            Image.fromarray(f).save(buf, format="JPEG", quality=95, subsampling=1)  # 4:2:2 for colour
            encoded.append(buf.getvalue())
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        if colour:
            ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.LossyImageCompression = "01"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    else:
        raise ValueError(f"unknown syntax {syntax!r}")
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    return path


def scanner_screen(t: int = 0, seed: int = 0, h: int = 96, w: int = 112, colour: bool = True) -> tuple[np.ndarray, tuple]:
    """A scanner screen (h,w,3) or (h,w): the echo in a tissue region at the top, a bright ECG
    strip and a white text bar below it (outside the region); returns (screen, region box x0,y0,x1,y1)."""
    box = (8, 0, 8 + W - 1, H - 1)  # the 64×80 echo frame, inclusive corners
    g = echo_frame(t, seed)
    g[ecg_row() - 2:, :] = 0  # the echo frame's own overlays stay inside; drop its bottom rows
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:H, box[0]:box[2] + 1] = g[..., None]
    xs = np.arange(8, w - 8)
    ys = (H + 12 - 4 * np.sin(xs / 4.0 + t)).round().astype(int)
    rgb[ys, xs] = (60, 255, 90) if colour else (255, 255, 255)  # the ECG strip, outside the region
    rgb[ys + 1, xs] = rgb[ys, xs]
    rgb[h - 10:h - 2, 4:w - 4] = 250  # the text bar
    return (rgb if colour else rgb[..., 0]), box


def write_medical(path: Path, array: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> Path:
    """Write a 2-D array as NIfTI (.nii.gz) or MetaImage (.mhd + .raw) with SimpleITK."""
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in spacing) + (1.0,) * (array.ndim - 2))
    sitk.WriteImage(img, str(path))
    return path


def corrupt(path: Path, data: bytes = b"this is not an image or a video\n" * 4) -> Path:
    """A file with the right name and garbage content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def hex64(i: int) -> str:
    """A stable 64-hex video hash (Unity style)."""
    return hashlib.sha256(str(i).encode()).hexdigest()
