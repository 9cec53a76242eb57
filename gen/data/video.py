"""Reading and writing echo clips as real video files with PyAV (FFmpeg), atomically.

The container follows the file extension: `.avi` (MJPEG by default, the codec of the EchoNet
AVIs), `.mp4` (H.264 when the FFmpeg build has it, else MPEG-4 Part 2) and `.mkv` (FFV1,
lossless). Pass `codec=` to choose another one the build supports, e.g. "ffv1" in an AVI.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from echosynth.gen.core.io import atomic_path

# extension -> (FFmpeg container format, default codec)
CONTAINERS: dict[str, tuple[str, str]] = {".avi": ("avi", "mjpeg"), ".mp4": ("mp4", "libx264"), ".mkv": ("matroska", "ffv1")}
# pixel format each codec stores; RGB-capable lossless formats where the codec has one
_PIX_FMT = {"mjpeg": "yuvj444p", "ffv1": "bgr0", "libx264": "yuv420p", "h264": "yuv420p", "mpeg4": "yuv420p",
            "libvpx-vp9": "gbrp", "png": "rgb24", "rawvideo": "bgr24"}
_CHROMA_SUBSAMPLED = {"yuv420p", "yuvj420p"}


class VideoError(ValueError):
    """A video file that cannot be written or read; the message names the file."""


def _codec_available(name: str) -> bool:
    import av

    try:
        av.codec.Codec(name, "w")
    except Exception:  # av raises UnknownCodecError (or ValueError in older versions)
        return False
    return True


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, codec: str | None = None,
                quality: int = 95) -> Path:
    """Write uint8 frames (T, H, W, 3) RGB or (T, H, W) grayscale to a video file, atomically; return the path.

    `quality` (1–100) sets the MJPEG quantiser; lossy codecs change pixel values slightly,
    FFV1 (".mkv", or codec="ffv1") round-trips exactly.
    """
    import av

    path = Path(path)
    ext = path.suffix.lower()
    if ext not in CONTAINERS:
        raise VideoError(f"{path}: unsupported extension {ext!r}; use one of {sorted(CONTAINERS)}")
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise VideoError(f"{path}: frames must be uint8, got {frames.dtype}")
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=3)
    if frames.ndim != 4 or frames.shape[3] != 3 or len(frames) == 0:
        raise VideoError(f"{path}: frames must be (T, H, W, 3) or (T, H, W) with T >= 1, got shape {frames.shape}")
    if not fps > 0:
        raise VideoError(f"{path}: fps must be positive, got {fps}")
    fmt, default_codec = CONTAINERS[ext]
    codec = codec or default_codec
    if codec == "libx264" and not _codec_available(codec):
        codec = "mpeg4"  # FFmpeg builds without x264 still have the native MPEG-4 encoder
    if not _codec_available(codec):
        raise VideoError(f"{path}: codec {codec!r} is not in this FFmpeg build (PyAV {av.__version__})")
    pix_fmt = _PIX_FMT.get(codec, "yuv420p")
    _, h, w, _ = frames.shape
    if pix_fmt in _CHROMA_SUBSAMPLED and (h % 2 or w % 2):
        raise VideoError(f"{path}: {codec} stores 4:2:0 colour and needs even height and width, got {h}×{w}; "
                         "use .avi (MJPEG) or .mkv (FFV1) for odd sizes")
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_path(path) as tmp:
        try:
            with av.open(str(tmp), mode="w", format=fmt) as container:
                stream = container.add_stream(codec, rate=rate)
                stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
                if codec == "mjpeg":
                    # qscale 2 (best) … 31; map quality 100 → 2, 1 → 31
                    stream.codec_context.qmin = stream.codec_context.qmax = int(round(2 + (100 - quality) * 29 / 99))
                elif codec in ("libx264", "h264"):
                    stream.options = {"crf": str(int(round(51 - quality * 0.51))), "preset": "veryfast"}
                for frame in frames:
                    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                    for packet in stream.encode(vf):
                        container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)
        except av.FFmpegError as e:
            raise VideoError(f"{path}: could not encode video with {codec} ({e})") from e
    return path


def read_video(path: str | os.PathLike, keep_partial: bool = False) -> np.ndarray:
    """Decode every frame of a video file as uint8 RGB (T, H, W, 3); VideoError names the file if unreadable.

    `keep_partial`: a file whose tail does not decode (a truncated copy) gives the frames before the break.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: video file not found")
    frames = []
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream in the file")
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
    except VideoError:
        raise
    except (av.FFmpegError, OSError, EOFError, ValueError) as e:
        if not (keep_partial and frames):
            raise VideoError(f"{path}: cannot read video ({type(e).__name__}: {e}); is it a complete video file?") from e
    return stack_frames(frames, path)


def stack_frames(frames: list[np.ndarray], path: str | os.PathLike, error: type[Exception] = VideoError) -> np.ndarray:
    """The decoded frames of `path` as one (T, ...) array; `error` names the file if there are none or their sizes differ."""
    if not frames:
        raise error(f"{path}: no frames could be decoded")
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise error(f"{path}: frames of different sizes {sorted(shapes)}")
    return np.stack(frames)
