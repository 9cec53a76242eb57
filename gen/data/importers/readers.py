"""Decoders for every file type the importers meet; each returns frames as a uint8 array.

`read_frames(path)` returns `(frames, spacing)`: frames is (T,H,W) for gray or (T,H,W,3) for
colour data, T = 1 for a still image; spacing is the (x, y) pixel spacing when the file states
one (medical formats) or None. Any decoder failure raises `UnreadableError` with the reason.

DICOM (ultrasound stills and multi-frame cine loops) is decoded by pydicom: uncompressed
MONOCHROME2/RGB/YBR, RLE Lossless (pydicom's own decoder), JPEG Baseline/Extended/Lossless
including YBR_FULL_422 (pylibjpeg-libjpeg, or Pillow). `read_frames` crops a DICOM to the 2D
tissue region of its Sequence of Ultrasound Regions; `decode` returns the whole screen with the
region, the physical pixel size and the non-identifying tags of `DICOM_META_TAGS`.

Medical volumes (NIfTI `.nii`/`.nii.gz`, MetaImage `.mhd`+`.raw`/`.mha`, NRRD) are read with
SimpleITK: one maintained library (ITK, Kitware/NLM) covers both CAMUS releases, it is what the
thesis used for CAMUS, it is already a project dependency, and `GetArrayFromImage` returns
(frames, H, W) in display orientation. nibabel would read NIfTI only (not MetaImage) and
returns (W, H, frames), needing a transpose.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from echosynth.gen.data.preprocess import to_uint8
from echosynth.gen.data.video import VideoError, read_video, stack_frames

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VIDEO_EXTS = (".avi", ".mp4", ".mov", ".mkv", ".webm", ".gif")
MEDICAL_EXTS = (".nii", ".nii.gz", ".mhd", ".mha", ".nrrd")
DICOM_EXTS = (".dcm", ".dicom")


class UnreadableError(ValueError):
    """A file that cannot be decoded: corrupt, truncated, or an unsupported encoding."""


def suffix(path: str | os.PathLike) -> str:
    """Lower-case extension, with the double `.nii.gz` kept whole."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def is_dicom(path: str | os.PathLike) -> bool:
    """A `.dcm` name, or the DICOM preamble magic `DICM` at byte 128 (files often lack a suffix)."""
    if suffix(path) in DICOM_EXTS:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def kind_of(path: str | os.PathLike) -> str | None:
    """'image', 'video', 'medical' or 'dicom' from the name (DICOM also by content), else None."""
    s = suffix(path)
    if s in IMAGE_EXTS:
        return "image"
    if s in VIDEO_EXTS:
        return "video"
    if s in MEDICAL_EXTS:
        return "medical"
    if is_dicom(path):
        return "dicom"
    return None


def _squeeze_gray(frames: np.ndarray) -> np.ndarray:
    """(T,H,W,3) whose channels are all equal -> (T,H,W), keeping memory low for gray videos."""
    if frames.ndim == 4 and np.array_equal(frames[..., 0], frames[..., 1]) and np.array_equal(frames[..., 1], frames[..., 2]):
        return frames[..., 0]
    return frames


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A still image (PNG/JPEG/BMP/TIFF) as (1,H,W) or (1,H,W,3)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("L", "I", "I;16", "I;16B", "F", "1"):
                a = to_uint8(np.asarray(im))
            else:
                a = np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise UnreadableError(f"{path}: not a readable image ({e})") from None
    return _squeeze_gray(a[None])


def read_gif(path: str | os.PathLike) -> np.ndarray:
    """An animated GIF as (T,H,W,3)."""
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as e:
        raise UnreadableError(f"{path}: not a readable GIF ({e})") from None
    return _squeeze_gray(stack_frames(frames, path, UnreadableError))


def read_clip(path: str | os.PathLike) -> np.ndarray:
    """A video (AVI/MP4/...) as (T,H,W,3), or (T,H,W) when it is pure gray; a truncated tail keeps the frames before it."""
    try:
        return _squeeze_gray(read_video(path, keep_partial=True))
    except VideoError as e:
        raise UnreadableError(str(e)) from None


def read_medical(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float]]:
    """NIfTI / MetaImage / NRRD via SimpleITK as (T,H,W) or (T,H,W,3), with (x, y) spacing."""
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error"
        raise UnreadableError(f"{path}: SimpleITK cannot read it ({msg})") from None
    arr = sitk.GetArrayFromImage(img)
    spacing = tuple(float(s) for s in img.GetSpacing()[:2])
    vector = img.GetNumberOfComponentsPerPixel() > 1
    if vector:
        arr = arr[..., :3] if arr.shape[-1] >= 3 else arr[..., 0]
    if arr.ndim == 2 or (vector and arr.ndim == 3 and arr.shape[-1] == 3):
        arr = arr[None]
    if arr.ndim == 4 and arr.shape[-1] != 3:
        raise UnreadableError(f"{path}: unsupported array shape {arr.shape}")
    if arr.ndim not in (3, 4):
        raise UnreadableError(f"{path}: unsupported array shape {arr.shape}")
    # Scale a whole volume at once so frames of one sequence keep a common intensity scale.
    return to_uint8(arr), spacing


# DICOM tags read into the manifest (meta_<name>): acquisition and device facts only. Nothing
# that names or dates a person, an institution or a study is copied (PatientName, birth date,
# study/series dates and times, UIDs, accession number, institution, station, operator, device
# serial number): PatientID only becomes the prefixed patient_id column.
DICOM_META_TAGS: dict[str, str] = {
    "Manufacturer": "manufacturer", "ManufacturerModelName": "model", "TransducerData": "transducer",
    "TransducerType": "transducer_type", "FrameTime": "frame_time_ms", "CineRate": "cine_rate",
    "RecommendedDisplayFrameRate": "display_frame_rate", "NumberOfFrames": "n_frames",
    "PhotometricInterpretation": "photometric",
}
TISSUE = 1  # RegionDataType: tissue (C.8.5.5.1.2); 2 = colour flow, 3 = PW spectral, ...
SPATIAL_2D = 1  # RegionSpatialFormat: 2D (B-mode and colour overlays); 2 = M-mode, 3 = spectral
UNITS_CM = 3  # PhysicalUnitsX/YDirection: cm


class NoPixelDataError(UnreadableError):
    """A DICOM object without an image: a structured report, a presentation state, ..."""


@dataclass
class DicomRegion:
    """The 2D tissue region of an ultrasound image: crop box and physical spacing."""

    top: int
    bottom: int  # exclusive
    left: int
    right: int  # exclusive
    spacing: tuple[float, float] | None  # (x, y) in cm per pixel, when the region states it


def ultrasound_region(ds, rows: int, cols: int) -> DicomRegion | None:
    """The largest 2D tissue region of the Sequence of Ultrasound Regions, or None.

    Scanners store the screen (sector, ECG strip, text bar) and describe where the image lies:
    RegionSpatialFormat 1 (2D) with RegionDataType 1 (tissue) is the B-mode region, bounded by
    RegionLocationMinX0/MinY0/MaxX1/MaxY1 (inclusive pixel corners); PhysicalDeltaX/Y is its
    pixel size when PhysicalUnitsX/YDirection is 3 (cm).
    """
    best = None
    for r in ds.get("SequenceOfUltrasoundRegions", []) or []:
        try:
            if int(r.get("RegionSpatialFormat", 0)) != SPATIAL_2D or int(r.get("RegionDataType", 0)) != TISSUE:
                continue
            x0, y0 = int(r.RegionLocationMinX0), int(r.RegionLocationMinY0)
            x1, y1 = int(r.RegionLocationMaxX1), int(r.RegionLocationMaxY1)
        except (AttributeError, TypeError, ValueError):
            continue  # a region without a usable box is not one we can crop to
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(cols - 1, x1), min(rows - 1, y1)
        if x1 <= x0 or y1 <= y0:
            continue
        spacing = None
        try:
            if int(r.get("PhysicalUnitsXDirection", 0)) == UNITS_CM and int(r.get("PhysicalUnitsYDirection", 0)) == UNITS_CM:
                dx, dy = abs(float(r.PhysicalDeltaX)), abs(float(r.PhysicalDeltaY))
                spacing = (dx, dy) if dx > 0 and dy > 0 else None
        except (AttributeError, TypeError, ValueError):
            spacing = None
        region = DicomRegion(y0, y1 + 1, x0, x1 + 1, spacing)
        if best is None or (y1 - y0) * (x1 - x0) > (best.bottom - best.top) * (best.right - best.left):
            best = region
    return best


def _meta_value(v) -> str | float | int:
    """A DICOM value as a plain JSON/CSV value (DS is a float, IS an int, multi-values joined by \\)."""
    from pydicom.multival import MultiValue

    if isinstance(v, MultiValue):
        return "\\".join(str(x).strip() for x in v)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    return str(v).strip()


def read_dicom_full(path: str | os.PathLike) -> tuple[np.ndarray, DicomRegion | None, dict]:
    """A DICOM still or cine loop via pydicom, uncropped: (frames, tissue region, meta).

    Frames are (T,H,W) or (T,H,W,3) uint8 (YBR_FULL/YBR_FULL_422 converted to RGB by pydicom;
    JPEG through pylibjpeg or Pillow, RLE by pydicom itself). `meta` holds DICOM_META_TAGS plus
    the SOP class, transfer syntax and the physical pixel size.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path))
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError) as e:
        raise UnreadableError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e})") from None
    sop = ds.get("SOPClassUID", None) or ds.file_meta.get("MediaStorageSOPClassUID", None)
    sop_name = getattr(sop, "name", str(sop or "unknown SOP class"))
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        what = "a structured report" if "SR" in sop_name.split() or "Report" in sop_name else "not an image"
        raise NoPixelDataError(f"{path}: no pixel data: {sop_name} is {what}")
    try:
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types for corrupt data or missing codecs
        ts = ds.file_meta.get("TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
        hint = f" (transfer syntax {ts.name})" if ts is not None and hasattr(ts, "name") else ""
        raise UnreadableError(f"{path}: DICOM pixel data cannot be decoded{hint}: {type(e).__name__}: {e}") from None
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if n_frames == 1:
        arr = arr[None]
    if samples == 1 and str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        arr = arr.max() - arr  # MONOCHROME1 stores white as 0
    if samples == 1 and str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr, samples = apply_color_lut(arr, ds), 3
    expected = 4 if samples > 1 else 3
    if arr.ndim != expected:
        raise UnreadableError(f"{path}: unexpected DICOM pixel array shape {arr.shape}")
    frames = _squeeze_gray(to_uint8(arr[..., :3] if samples > 1 else arr))
    region = ultrasound_region(ds, frames.shape[1], frames.shape[2])
    meta: dict = {"sop_class": sop_name}
    ts = ds.file_meta.get("TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
    if ts is not None:
        meta["transfer_syntax"] = getattr(ts, "name", str(ts))
    for tag, name in DICOM_META_TAGS.items():
        v = ds.get(tag, None)
        if v is not None and str(v).strip() != "":
            meta[name] = _meta_value(v)
    if region is not None:
        meta["region"] = f"{region.left},{region.top},{region.right},{region.bottom}"
        if region.spacing is not None:
            meta["delta_x_cm"], meta["delta_y_cm"] = region.spacing
    elif "PixelSpacing" in ds:  # mm, (row, column) order
        row, col = (float(v) for v in ds.PixelSpacing)
        meta["delta_x_cm"], meta["delta_y_cm"] = col / 10, row / 10
    return frames, region, meta


def read_dicom(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float] | None]:
    """A DICOM still or loop as (frames, (x, y) spacing), cropped to its 2D tissue region if any."""
    frames, region, meta = read_dicom_full(path)
    frames = crop_region(frames, region)
    spacing = (meta["delta_x_cm"], meta["delta_y_cm"]) if "delta_x_cm" in meta else None
    return frames, spacing


def crop_region(frames: np.ndarray, region: DicomRegion | None) -> np.ndarray:
    """Frames (T,H,W[,3]) cut to the region's box (None: unchanged); gray again if only gray is left."""
    if region is None:
        return frames
    return _squeeze_gray(np.ascontiguousarray(frames[:, region.top:region.bottom, region.left:region.right]))


@dataclass
class Decoded:
    """A decoded file as stored (a DICOM's whole screen), with what the importer needs around it."""

    frames: np.ndarray  # (T,H,W) or (T,H,W,3) uint8
    spacing: tuple[float, float] | None  # (x, y) pixel size when the file states one
    region: DicomRegion | None = None  # the 2D tissue region to crop to (DICOM only)
    meta: dict = field(default_factory=dict)  # file facts for meta_* columns (DICOM only)


def decode(path: str | os.PathLike) -> Decoded:
    """Decode any supported file, DICOM uncropped with its region and meta; raise UnreadableError."""
    path = Path(path)
    if path.is_file() and path.stat().st_size > 0 and kind_of(path) == "dicom":
        frames, region, meta = read_dicom_full(path)
        spacing = (meta["delta_x_cm"], meta["delta_y_cm"]) if "delta_x_cm" in meta else None
        return Decoded(frames, spacing, region, meta)
    frames, spacing = read_frames(path)
    return Decoded(frames, spacing)


def read_frames(path: str | os.PathLike, kind: str | None = None) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Decode any supported file into (frames, spacing); raise UnreadableError if it cannot."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise UnreadableError(f"{path}: empty file")
    kind = kind or kind_of(path)
    if kind == "image":
        return read_image(path), None
    if kind == "video":
        return (read_gif(path) if suffix(path) == ".gif" else read_clip(path)), None
    if kind == "medical":
        return read_medical(path)
    if kind == "dicom":
        return read_dicom(path)
    raise UnreadableError(f"{path}: unsupported file type {suffix(path) or '(no extension)'}")
