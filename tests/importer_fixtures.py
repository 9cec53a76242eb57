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


def write_dicom(path: Path, frames: np.ndarray, patient_id: str = "P001") -> Path:
    """Write uint8 gray frames (T,H,W) (T = 1: a still) as an uncompressed DICOM file."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    ds.Modality = "US"
    ds.Rows, ds.Columns = frames.shape[1], frames.shape[2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.PixelData = np.ascontiguousarray(frames, dtype=np.uint8).tobytes()
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    return path


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
