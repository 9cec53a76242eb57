"""Video files: write/read round trips with PyAV, atomic writes, clear errors; phantom clips on disk."""

from __future__ import annotations

import numpy as np
import pytest

from echosynth.gen.data import phantom as P
from echosynth.gen.data.video import VideoError, read_video, write_video


def _smooth_frames(t: int = 5, h: int = 48, w: int = 64) -> np.ndarray:
    """Smooth moving colour gradients: what lossy codecs keep well."""
    yy, xx = np.mgrid[0:h, 0:w]
    frames = [np.stack([(xx * 3 + k * 9) % 256, (yy * 4) % 256, np.full_like(xx, 40 * k % 256)], -1) for k in range(t)]
    return np.asarray(frames, np.uint8)


def test_lossless_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 30, 41, 3), dtype=np.uint8)  # noise and odd sizes: a hard case
    for path, codec in ((tmp_path / "a.mkv", None), (tmp_path / "b.avi", "ffv1")):
        write_video(path, frames, fps=25, codec=codec)
        assert np.array_equal(read_video(path), frames)


@pytest.mark.parametrize("name", ["clip.avi", "clip.mp4"])
def test_lossy_round_trip_is_close(tmp_path, name):
    frames = _smooth_frames()
    path = write_video(tmp_path / name, frames, fps=30)
    back = read_video(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames).mean() < 4


def test_grayscale_frames_come_back_rgb(tmp_path):
    gray = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (3, 24, 1))
    back = read_video(write_video(tmp_path / "g.mkv", gray, fps=10))
    assert back.shape == (3, 24, 32, 3) and np.array_equal(back[..., 1], gray)


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    write_video(tmp_path / "x.avi", _smooth_frames(), fps=25)
    with pytest.raises(VideoError, match="even height and width"):
        write_video(tmp_path / "odd.mp4", _smooth_frames(h=31), fps=25)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.avi"]


def test_bad_inputs_name_the_file(tmp_path):
    bad = tmp_path / "broken.avi"
    bad.write_bytes(b"RIFF" + b"\x00garbage" * 50)
    with pytest.raises(VideoError, match="broken.avi"):
        read_video(bad)
    truncated = tmp_path / "cut.mp4"
    write_video(truncated, _smooth_frames(), fps=25)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(VideoError, match="cut.mp4"):
        read_video(truncated)
    with pytest.raises(FileNotFoundError, match="missing.avi"):
        read_video(tmp_path / "missing.avi")
    with pytest.raises(VideoError, match="unsupported extension"):
        write_video(tmp_path / "x.gif", _smooth_frames(), fps=25)
    with pytest.raises(VideoError, match="uint8"):
        write_video(tmp_path / "x.avi", _smooth_frames().astype(np.float32), fps=25)


def test_phantom_clips_on_disk_keep_doppler_colour(tmp_path):
    items = [P.make_item(i, "unity", "A4C", f"v{i}", 0) for i in range(3)]
    paths = P.write_clips(tmp_path, items, seed=0, n_frames=6, doppler_fraction=1.0, raw=False, size=64)
    for path in paths:
        clip = read_video(path)
        assert clip.shape == (6, 64, 64, 3)
        chroma = clip.max(axis=3).astype(int) - clip.min(axis=3)
        assert (chroma > 80).sum() > 20
    plain = P.write_clips(tmp_path / "bmode", items[:1], seed=0, n_frames=4, doppler_fraction=0.0, raw=True)
    clip = read_video(plain[0])
    assert clip.shape == (4, *P.SOURCES["unity"].raw_hw, 3)
