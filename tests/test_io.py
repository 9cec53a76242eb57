"""gen/core/io.py's atomic directory: renamed into place whole, or not at all, with the umask's modes."""

from __future__ import annotations

import os
import stat

import pytest

from echosynth.gen.core.io import atomic_dir


def _write(path, text: str, mode: int | None = None) -> None:
    path.write_text(text)
    if mode is not None:
        path.chmod(mode)


def test_atomic_dir_renames_onto_final_with_umask_modes(tmp_path):
    final = tmp_path / "checkpoints" / "step-0000005"  # the parent is created
    old = os.umask(0o022)
    try:
        with atomic_dir(final) as tmp:
            assert tmp.parent == final.parent and tmp.name.startswith(".step-0000005.") and tmp.is_dir()
            assert not final.exists()  # nothing at `final` until the block is done
            _write(tmp / "model.safetensors", "weights", 0o600)  # as safetensors' save_file leaves it
            (tmp / "sub").mkdir(mode=0o700)
            _write(tmp / "sub" / "state.json", "{}", 0o600)
    finally:
        os.umask(old)
    assert sorted(p.relative_to(final).as_posix() for p in final.rglob("*")) == [
        "model.safetensors", "sub", "sub/state.json"]
    assert (final / "model.safetensors").read_text() == "weights"
    assert [p.name for p in final.parent.iterdir()] == [final.name]  # no temporary directory left
    for p in (final / "model.safetensors", final / "sub" / "state.json"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    for d in (final, final / "sub"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755, d


def test_atomic_dir_follows_a_group_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            _write(tmp / "a.json", "{}", 0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out" / "a.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o750


def test_atomic_dir_failure_leaves_nothing(tmp_path):
    final = tmp_path / "epoch-view-0003"
    with pytest.raises(RuntimeError, match="killed mid-write"):
        with atomic_dir(final) as tmp:
            _write(tmp / "model.safetensors", "half")
            raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []  # neither `final` nor the hidden temporary directory


def test_atomic_dir_replaces_an_existing_final_only_on_success(tmp_path):
    final = tmp_path / "step-0000010"
    final.mkdir()
    _write(final / "old.json", "old")
    with pytest.raises(ValueError):
        with atomic_dir(final) as tmp:
            _write(tmp / "new.json", "new")
            raise ValueError("failed")
    assert [p.name for p in tmp_path.iterdir()] == [final.name]
    assert [p.name for p in final.iterdir()] == ["old.json"]  # a failed write keeps the previous one
    with atomic_dir(final) as tmp:
        _write(tmp / "new.json", "new")
    assert [p.name for p in final.iterdir()] == ["new.json"]  # a successful one replaces it whole
    assert [p.name for p in tmp_path.iterdir()] == [final.name]
