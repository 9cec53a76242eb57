"""Decoders for every file type the importers meet; each returns frames as a uint8 array.

`read_frames(path)` returns `(frames, spacing)`: frames is (T,H,W) for gray or (T,H,W,3) for
colour data, T = 1 for a still image; spacing is the (x, y) pixel spacing when the file states
one (medical formats) or None. Any decoder failure raises `UnreadableError` with the reason.

Medical volumes (NIfTI `.nii`/`.nii.gz`, MetaImage `.mhd`+`.raw`/`.mha`, NRRD) are read with
SimpleITK: one maintained library (ITK, Kitware/NLM) covers both CAMUS releases, it is what the
thesis used for CAMUS, it is already a project dependency, and `GetArrayFromImage` returns
(frames, H, W) in display orientation. nibabel would read NIfTI only (not MetaImage) and
returns (W, H, frames), needing a transpose.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gen.data.preprocess import to_uint8

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


def _stack(frames: list[np.ndarray], path) -> np.ndarray:
    if not frames:
        raise UnreadableError(f"{path}: no frames could be decoded")
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise UnreadableError(f"{path}: frames of different sizes {sorted(shapes)}")
    return np.stack(frames)


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
    return _squeeze_gray(_stack(frames, path))


def read_video(path: str | os.PathLike) -> np.ndarray:
    """A video (AVI/MP4/...) decoded with PyAV as (T,H,W,3), or (T,H,W) when it is pure gray."""
    import av

    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UnreadableError(f"{path}: no video stream")
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
    except UnreadableError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError) as e:
        if not frames:  # a truncated tail still leaves usable frames
            raise UnreadableError(f"{path}: not a readable video ({e})") from None
    return _squeeze_gray(_stack(frames, path))


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


def read_dicom(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float] | None]:
    """A DICOM still or cine loop via pydicom as (T,H,W) or (T,H,W,3) (YBR converted to RGB)."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types for corrupt data or missing codecs
        hint = ""
        try:
            if ds.file_meta.TransferSyntaxUID.is_compressed:
                hint = (f"; it is compressed ({ds.file_meta.TransferSyntaxUID.name}): install a pydicom "
                        "decoder plugin, e.g. `pip install pylibjpeg pylibjpeg-libjpeg`")
        except (AttributeError, NameError, UnboundLocalError):
            pass
        raise UnreadableError(f"{path}: not a readable DICOM image ({type(e).__name__}: {e}){hint}") from None
    n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if n_frames == 1:
        arr = arr[None]
    if samples == 1 and str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        arr = arr.max() - arr  # MONOCHROME1 stores white as 0
    expected = 4 if samples > 1 else 3
    if arr.ndim != expected:
        raise UnreadableError(f"{path}: unexpected DICOM pixel array shape {arr.shape}")
    spacing = None
    if "PixelSpacing" in ds:
        row, col = (float(v) for v in ds.PixelSpacing)
        spacing = (col, row)
    return _squeeze_gray(to_uint8(arr[..., :3] if samples > 1 else arr)), spacing


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
        return (read_gif(path) if suffix(path) == ".gif" else read_video(path)), None
    if kind == "medical":
        return read_medical(path)
    if kind == "dicom":
        return read_dicom(path)
    raise UnreadableError(f"{path}: unsupported file type {suffix(path) or '(no extension)'}")
