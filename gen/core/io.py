"""Atomic file writes and content fingerprints shared by every stage.

Every file a stage hands to the next is written to a temporary file in the same directory and
renamed into place, so an interrupted run never leaves a half-written manifest, checkpoint or
sample file behind (rename is atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np


def current_umask() -> int:
    """The process umask (from /proc on Linux: setting and restoring it would race with other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def share_modes(path: str | os.PathLike) -> None:
    """Give a file, or every file and folder under a directory, the umask's mode (0644 / 0755 under 022).

    For writers that create files 0600 themselves (safetensors' save_file, for one).
    """
    mask = current_umask()
    path = Path(path)
    for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def temp_file(parent: str | os.PathLike, prefix: str, suffix: str = ".tmp") -> Path:
    """Create an empty, uniquely named file in `parent` with the umask's mode (0644 under umask 022).

    tempfile.mkstemp would create it 0600, and the rename keeps that mode, so every output of
    a lab's shared run directory would be unreadable by the group.
    """
    for _ in range(100):
        p = Path(parent) / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the kernel applies the umask
            return p
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: could not create a unique temporary file")


def temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """Create a uniquely named directory in `parent` with the umask's mode (not mkdtemp's 0700)."""
    for _ in range(100):
        p = Path(parent) / f"{prefix}{secrets.token_hex(6)}"
        try:
            p.mkdir(mode=0o777)
            return p
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: could not create a unique temporary directory")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp_path = temp_file(path.parent, prefix=f".{path.name}.")
    except OSError as e:  # name the file the user asked for, not our temporary one
        raise type(e)(e.errno, e.strerror, str(path)) from None
    try:
        yield tmp_path
        if tmp_path.is_file() and tmp_path.stat().st_mode & 0o777 != 0o666 & ~current_umask():
            share_modes(tmp_path)  # the block replaced our file with one of its own mode (e.g. 0600)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary directory next to `final`; on success rename it onto `final`, else remove it.

    Every file and folder in it gets the umask's mode first (writers such as safetensors create
    theirs 0600). An existing `final` is replaced: it is removed just before the rename, because
    rename cannot replace a non-empty directory.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(final.parent, prefix=f".{final.name}.")  # hidden: never mistaken for a complete one
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        share_modes(tmp)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write bytes."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write UTF-8 text."""
    write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write JSON (indented, numpy scalars and paths converted)."""
    write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON with an error that names the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # garbage bytes fail before JSON parsing
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line (a whole line per write, flushed) to a log such as stats.jsonl."""
    line = json.dumps(record, default=_json_default) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file, skipping a torn last line left by a killed writer."""
    out = []
    lines = Path(path).read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: not valid JSON") from None
    return out


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Atomically write an uncompressed .npz."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes(path, buf.getvalue())


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 grayscale (H,W) or RGB (H,W,3) array encoded as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Atomically write a uint8 grayscale (H,W) or RGB (H,W,3) array as PNG."""
    if image.dtype != np.uint8:
        raise ValueError(f"{path}: PNG images must be uint8, got {image.dtype}")
    write_bytes(path, png_bytes(image))


def sha1_bytes(data: bytes) -> str:
    """Hex SHA-1 of bytes."""
    return hashlib.sha1(data).hexdigest()


def sha1_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-1 of a file's content, read in chunks."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(path: str | os.PathLike) -> str:
    """Content fingerprint of a file or a directory tree (names + contents), for caching."""
    path = Path(path)
    if path.is_file():
        return sha1_file(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: cannot fingerprint a missing path")
    h = hashlib.sha1()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(path)).encode())
        h.update(sha1_file(p).encode())
    return h.hexdigest()


def check_writable_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse to reuse a non-empty output path unless `overwrite`; return it as a Path."""
    path = Path(path)
    if path.exists() and (path.is_file() or any(path.iterdir())) and not overwrite:
        raise FileExistsError(f"{path} already exists and is not empty; pass --overwrite to replace it")
    return path


# ----------------------------------------------------------------------------------------------
# Outputs kept out of git, and clean errors for unwritable outputs


def git_unignored(path: str | os.PathLike) -> Path | None:
    """The git work tree holding `path` if git would NOT ignore it there (so `git add .` takes it), else None."""
    path = Path(path).resolve()
    probe = path
    while not probe.exists():  # not created yet: ask about the nearest existing parent's work tree
        probe = probe.parent
    cwd = probe if probe.is_dir() else probe.parent
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if top.returncode != 0:
            return None
        root = Path(top.stdout.strip()).resolve()
        # Trailing slash for directories: patterns such as `/surveys/` only match directories.
        rel = os.path.relpath(path, root) + ("/" if path.is_dir() or not path.suffix else "")
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", rel], cwd=root,
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return root if ignored.returncode == 1 else None  # 0: ignored; 128: git could not tell


def warn_if_tracked(path: str | os.PathLike, what: str, prog: str = "") -> bool:
    """Print a warning when `path` sits in a git work tree that does not ignore it; True if warned."""
    root = git_unignored(path)
    if root is None:
        return False
    print(f"{prog + ': ' if prog else ''}warning: {path} ({what}) is inside the git work tree {root} and not "
          f"ignored there, so `git add .` would commit it; move it out of the tree or add it to "
          f"{root / '.gitignore'}", file=sys.stderr)
    return True


def describe_os_error(e: OSError) -> str | None:
    """One line naming the file and what to do for an unwritable output, or None for other errors."""
    name = e.filename if e.filename is not None else "an output file"
    if isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EPERM):
        return f"cannot write {name}: permission denied; choose a writable --out or fix the directory's permissions"
    if e.errno == errno.EROFS:
        return f"cannot write {name}: read-only file system; choose an --out on a writable disk"
    if e.errno == errno.ENOSPC:
        return f"cannot write {name}: no space left on the device; free space or choose another --out"
    return None


def run_main(main: Callable[[], int | None], prog: str | None = None) -> int:
    """Run a script's main(); an unwritable output becomes one error line and exit code 2, not a traceback."""
    prog = prog or Path(sys.argv[0]).name
    try:
        rc = main()
    except OSError as e:
        msg = describe_os_error(e)
        if msg is None:
            raise
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    return int(rc or 0)
